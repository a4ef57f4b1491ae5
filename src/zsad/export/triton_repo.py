"""A Triton Inference Server model repository from a bundle: the encoder as ONNX Runtime (FP32,
FP16), TensorRT plan and Python-backend models, optionally the HeadCLIP method as an ensemble.

Every model's config.pbtxt carries bundle.json (and HeadCLIP's calibration) as parameters, so a
client checks on connect that the served model is the one it expects. Needs no torch.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from zsad.errors import ZsadError, echo_stderr
from zsad.formats.atomic import atomic_open, write_text
from zsad.formats.bundle import FP16_ONNX, FP32_ONNX, Bundle
from zsad.formats.triton import (
    MAP_OUTPUT,
    PARAM_BUNDLE,
    PARAM_CALIBRATION,
    PARAM_FILE,
    SCORE_OUTPUT,
    SUFFIXES,
)

FORMS = ("onnx", "fp16", "trt", "python", "openvino")
DEFAULT_FORMS = ("onnx", "fp16", "trt")


@dataclass(frozen=True)
class RepositoryOptions:
    """How the models are served: names, batching and instances."""

    name: str = "zsad"
    forms: tuple[str, ...] = DEFAULT_FORMS  # "trt" is skipped when the bundle has no TRT engine
    max_batch: int = 16
    preferred_batch: tuple[int, ...] = (4, 8)
    queue_delay_us: int = 2000
    instances: int = 1
    kind: str = "gpu"  # gpu or cpu, for the ONNX Runtime and Python models (plans are GPU only)
    ensemble: bool = False  # HeadCLIP: also serve image -> score + map


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensor(name: str, dims: Sequence[int], data_type: str = "TYPE_FP32") -> str:
    shape = ", ".join(map(str, dims))
    return f"  {{ name: {_quote(name)} data_type: {data_type} dims: [ {shape} ] }}"


def _tensors(label: str, items: list[str]) -> str:
    return f"{label} [\n" + ",\n".join(items) + "\n]\n"


def _dims(shape: Sequence[Any]) -> list[int]:
    """A bundle shape ["batch", ...] without its batch axis."""
    return [int(d) for d in shape[1:]]


def _parameters(values: dict[str, str]) -> str:
    return "".join(
        f"parameters {{ key: {_quote(k)} value {{ string_value: {_quote(v)} }} }}\n"
        for k, v in values.items()
    )


def encoder_config(
    bundle: Bundle,
    name: str,
    form: str,
    served_file: str,
    options: RepositoryOptions,
    max_batch: int,
) -> str:
    """config.pbtxt of one encoder model."""
    head = {
        "onnx": 'platform: "onnxruntime_onnx"\ndefault_model_filename: "model.onnx"\n',
        "fp16": 'platform: "onnxruntime_onnx"\ndefault_model_filename: "model.onnx"\n',
        "trt": 'platform: "tensorrt_plan"\ndefault_model_filename: "model.plan"\n',
        "python": 'backend: "python"\n',
        "openvino": 'backend: "openvino"\ndefault_model_filename: "model.onnx"\n',
    }[form]
    kind = "KIND_GPU" if form == "trt" or options.kind == "gpu" else "KIND_CPU"
    if form == "openvino":
        kind = "KIND_CPU"  # Triton's OpenVINO backend runs on the server's CPU
    meta = bundle.meta
    preferred = [b for b in options.preferred_batch if b <= max_batch]
    batching = "dynamic_batching {\n"
    if preferred:
        batching += f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
    batching += f"  max_queue_delay_microseconds: {options.queue_delay_us}\n}}\n"
    params = {PARAM_BUNDLE: json.dumps(meta, sort_keys=True), PARAM_FILE: served_file}
    if form == "openvino":
        # The backend reads these keys and no others; it has no f32 precision key, so a CPU with
        # AMX or AVX-512 BF16 may compute bf16 there (docs/triton.md).
        params.update({"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"})
    if bundle.calibration is not None:
        calibration = bundle.file(bundle.calibration).read_bytes()
        params[PARAM_CALIBRATION] = base64.b64encode(calibration).decode("ascii")
    return (
        f"name: {_quote(name)}\n"
        + head
        + f"max_batch_size: {max_batch}\n"
        + _tensors("input", [_tensor(meta["input"]["name"], _dims(meta["input"]["shape"]))])
        + _tensors("output", [_tensor(o, _dims(meta["output_shapes"][o])) for o in bundle.outputs])
        + batching
        + f"instance_group [ {{ count: {options.instances} kind: {kind} }} ]\n"
        + _parameters(params)
    )


def scorer_config(bundle: Bundle, name: str, options: RepositoryOptions) -> str:
    """config.pbtxt of the HeadCLIP scorer (Python backend, CPU)."""
    meta, size = bundle.meta, bundle.image_size
    return (
        f'name: {_quote(name)}\nbackend: "python"\nmax_batch_size: {options.max_batch}\n'
        + _tensors("input", [_tensor(o, _dims(meta["output_shapes"][o])) for o in bundle.outputs])
        + _tensors("output", [_tensor(SCORE_OUTPUT, [1]), _tensor(MAP_OUTPUT, [size, size])])
        + f"dynamic_batching {{ max_queue_delay_microseconds: {options.queue_delay_us} }}\n"
        + f"instance_group [ {{ count: {options.instances} kind: KIND_CPU }} ]\n"
    )


def ensemble_config(bundle: Bundle, name: str, encoder: str, scorer: str, max_batch: int) -> str:
    """config.pbtxt of the HeadCLIP ensemble: image -> encoder -> scorer -> score, map."""
    meta, size = bundle.meta, bundle.image_size
    pixels = meta["input"]["name"]

    def maps(label: str, pairs: dict[str, str]) -> str:
        return " ".join(
            f"{label} {{ key: {_quote(k)} value: {_quote(v)} }}" for k, v in pairs.items()
        )

    def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
        body = f"{maps('input_map', inputs)} {maps('output_map', outputs)}"
        return f"    {{ model_name: {_quote(model)} model_version: -1 {body} }}"

    # The encoder's outputs travel between the steps under internal names.
    features = {o: f"_{o}" for o in bundle.outputs}
    results = {SCORE_OUTPUT: SCORE_OUTPUT, MAP_OUTPUT: MAP_OUTPUT}
    steps = [step(encoder, {pixels: pixels}, features), step(scorer, features, results)]
    return (
        f'name: {_quote(name)}\nplatform: "ensemble"\nmax_batch_size: {max_batch}\n'
        + _tensors("input", [_tensor(pixels, _dims(meta["input"]["shape"]))])
        + _tensors("output", [_tensor(SCORE_OUTPUT, [1]), _tensor(MAP_OUTPUT, [size, size])])
        + "ensemble_scheduling {\n  step [\n"
        + ",\n".join(steps)
        + "\n  ]\n}\n"
        + _parameters({PARAM_BUNDLE: json.dumps(meta, sort_keys=True)})
    )


def _copy(source: Path, target: Path) -> None:
    # Atomic: a server polling the repository must never load a half-copied model.
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as reader, atomic_open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer, 8 << 20)


def _python_model(module: str) -> str:
    return resources.files("zsad.export.triton_models").joinpath(f"{module}.py").read_text()


def write_repository(
    bundle_dir: Path,
    repo: Path,
    options: RepositoryOptions = RepositoryOptions(),
    log: Callable[[str], None] = echo_stderr,
) -> list[str]:
    """Write (or refresh) the models of ``bundle_dir`` into the Triton repository ``repo``;
    returns the model names written."""
    bundle = Bundle.load(bundle_dir)
    unknown = sorted(set(options.forms) - set(FORMS))
    if unknown or not options.forms:
        raise ZsadError(f"--form {','.join(unknown) or '(none)'}: choose among {', '.join(FORMS)}")
    if options.ensemble and bundle.method != "headclip":
        raise ZsadError(
            f"--ensemble: {bundle_dir} is a {bundle.method} bundle; only headclip scores each "
            "image on its own (STAPS keeps its bank in the station)"
        )
    if not options.name.replace("_", "").replace("-", "").isalnum():
        raise ZsadError(f"--name {options.name!r}: letters, digits, '-' and '_' only")
    written = []
    for form in options.forms:
        name = options.name + SUFFIXES[form]
        max_batch = options.max_batch
        if form == "trt":
            engine = bundle.engine
            if engine is None or engine.flavour != "trt":
                why = "no engine" if engine is None else "a TensorRT-RTX engine"
                log(
                    f"zsad: {name}: skipped, {bundle_dir} has {why} (Triton serves full "
                    "TensorRT plans: zsad build-engine --engine trt on the server's GPU)"
                )
                continue
            max_batch = min(max_batch, engine.max_batch)
            source, target = bundle.file(engine.file), "model.plan"
        else:
            source = bundle.file(FP16_ONNX if form == "fp16" else FP32_ONNX)
            target = "model.onnx"
        folder = repo / name
        if form == "python":
            write_text(folder / "1" / "model.py", _python_model("onnx_encoder"))
        _copy(source, folder / "1" / target)
        write_text(
            folder / "config.pbtxt",
            encoder_config(bundle, name, form, source.name, options, max_batch),
        )
        written.append(name)
        log(f"zsad: {name}: {source.name} as {form}, max batch {max_batch}")
    if options.ensemble:
        written += _write_ensemble(bundle, repo, options, written[0])
    return written


def _write_ensemble(
    bundle: Bundle, repo: Path, options: RepositoryOptions, encoder: str
) -> list[str]:
    assert bundle.calibration is not None
    scorer = options.name + SUFFIXES["scorer"]
    ensemble = options.name + SUFFIXES["headclip"]
    write_text(repo / scorer / "1" / "model.py", _python_model("headclip_scorer"))
    _copy(bundle.file(bundle.calibration), repo / scorer / "1" / "calibration.safetensors")
    write_text(repo / scorer / "config.pbtxt", scorer_config(bundle, scorer, options))
    write_text(
        repo / ensemble / "config.pbtxt",
        ensemble_config(bundle, ensemble, encoder, scorer, options.max_batch),
    )
    (repo / ensemble / "1").mkdir(parents=True, exist_ok=True)
    return [scorer, ensemble]
