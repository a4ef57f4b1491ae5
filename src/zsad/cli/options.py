"""Options shared by the zsad commands, each declared once; option groups arrive in a command as
one object (an EncoderSpec, a SetScoringConfig, MethodOptions)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from zsad.api.encoders import EncoderSpec
from zsad.data.cameras.uri import parse_settings
from zsad.errors import ZsadError
from zsad.formats.backbones import MAX_GRID
from zsad.formats.local_path import parse_layers
from zsad.formats.methods import METHODS, STREAMABLE
from zsad.scoring.pipeline import SetScoringConfig
from zsad.station.camera import CameraConfig
from zsad.station.line.config import HttpConfig, LineConfig, MqttConfig, OpcuaConfig

# zsad.api.scorers (the Detector's scoring, tqdm) is imported where the options become
# MethodOptions: `zsad --help` starts without it.

SCORING_PANEL = "Training-free scoring (staps / musc)"
HEADCLIP_PANEL = "HeadCLIP"
STATION_PANEL = "Station"
SCALE_PANEL = "Groups and clusters"
ENCODER_PANEL = "Encoder"
_SIZE_LIMIT = f"at most {MAX_GRID} patches a side: {MAX_GRID * 14} px at 14 px patches"

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="Image encoder: an open_clip ViT (CLIP; all methods) or a DINO/DINOv2 backbone as "
        "MuSc runs them (dinov2_vits14, dinov2_vitb14, dinov2_vitl14, dinov2_vitg14, dino_vitb16, "
        "dino_vitb8; staps and musc). 'zsad-tiny' is a small random model for tests and demos; "
        "`zsad models` lists them all.",
        rich_help_panel=ENCODER_PANEL,
    ),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        help="Local checkpoint to load: .safetensors or a state-dict .pt/.pth (read with "
        "weights_only). DINO/DINOv2: the official torch hub files, timm's, or HuggingFace "
        "Dinov2Model's model.safetensors (also what `zsad weights from-onnx` writes).",
        rich_help_panel=ENCODER_PANEL,
    ),
]
PretrainedOpt = Annotated[
    str | None,
    typer.Option(
        "--pretrained",
        help="Release to download when no --weights is given (default: the model's standard one, "
        "openai for CLIP, meta for DINO/DINOv2; other open_clip tags in `zsad models`); "
        "'random' asks for random weights (timing only).",
        rich_help_panel=ENCODER_PANEL,
    ),
]
ImageSizeOpt = Annotated[
    int,
    typer.Option(
        "--image-size",
        min=14,
        help=f"Encoder input size in pixels (multiple of the patch size, {_SIZE_LIMIT}).",
        rich_help_panel=ENCODER_PANEL,
    ),
]
DeviceOpt = Annotated[
    Literal["auto", "cpu", "cuda", "gpu"],
    typer.Option(
        "--device",
        help="Where to run: auto, cpu, cuda (the GPU when one is present), gpu (an Intel GPU, "
        "with --backend openvino).",
        rich_help_panel=ENCODER_PANEL,
    ),
]
RuntimeOpt = Annotated[
    Literal["auto", "onnxruntime", "openvino"],
    typer.Option(
        "--backend",
        help="What runs a --bundle: onnxruntime, openvino (Intel/AMD CPUs, Intel GPUs; the "
        "openvino extra) or auto (ONNX Runtime on CUDA, else OpenVINO on x86-64 CPUs where "
        "installed, else ONNX Runtime; says so on stderr).",
        rich_help_panel=ENCODER_PANEL,
    ),
]
PrecisionOpt = Annotated[
    Literal["fp32", "bf16", "int8"] | None,
    typer.Option(
        "--precision",
        help="OpenVINO's arithmetic (implies --backend openvino): fp32 (default, the scores of "
        "ONNX Runtime), bf16 (faster on CPUs with AVX-512 BF16 or AMX; scores move by about "
        "1e-2) or int8 (8-bit weights, fp32 arithmetic).",
        rich_help_panel=ENCODER_PANEL,
    ),
]
MaybeImageSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--image-size",
        min=14,
        help=f"Encoder input size in pixels (multiple of the patch size, {_SIZE_LIMIT}); "
        "default: the bundle's with --bundle/--engine, 518 for the ViT-L/14 models, else the "
        "model's own size.",
        rich_help_panel=ENCODER_PANEL,
    ),
]
BundleOpt = Annotated[
    Path | None,
    typer.Option(
        "--bundle",
        help="Run the encoder from a `zsad export` bundle (its folder, or one of its .onnx files) "
        "on ONNX Runtime; no torch needed. --model/--weights are then ignored.",
        rich_help_panel=ENCODER_PANEL,
    ),
]
EngineOpt = Annotated[
    Path | None,
    typer.Option(
        "--engine",
        help="Run the encoder on a bundle's TensorRT engine (BUNDLE/encoder.engine) on the GPU.",
        rich_help_panel=ENCODER_PANEL,
    ),
]
TritonOpt = Annotated[
    str | None,
    typer.Option(
        "--triton",
        help="Run the encoder on a Triton Inference Server: grpc://HOST:8001 (default) or "
        "http://HOST:8000, grpcs:// or https:// for TLS; needs --triton-model. Scoring stays "
        "here. With --bundle, the served file must be that bundle's.",
        rich_help_panel=ENCODER_PANEL,
    ),
]
TritonModelOpt = Annotated[
    str | None,
    typer.Option(
        "--triton-model",
        help="The served encoder model (a name `zsad triton` wrote, e.g. zsad or zsad_fp16).",
        rich_help_panel=ENCODER_PANEL,
    ),
]
TritonTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--triton-timeout",
        min=0.1,
        help="Seconds a request to the Triton server may take before it counts as an outage.",
        rich_help_panel=ENCODER_PANEL,
    ),
]
TritonCaOpt = Annotated[
    Path | None,
    typer.Option(
        "--triton-ca",
        help="With grpcs:// or https://: the PEM file of the CA that signed the server's "
        "certificate (default: the system's CAs).",
        rich_help_panel=ENCODER_PANEL,
    ),
]
TritonTokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--triton-token-file",
        help="A file whose first line is an access token for the server or a proxy in front of "
        "it, sent as 'Authorization: Bearer TOKEN' (default: $ZSAD_TRITON_TOKEN, if set).",
        rich_help_panel=ENCODER_PANEL,
    ),
]
QueueDelayOpt = Annotated[
    int,
    typer.Option(
        "--queue-delay-us",
        min=0,
        help="Triton dynamic batching: how long a request may wait for others to join its batch.",
    ),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per encoder call.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (data, orders, clustering).")]
ProgressOpt = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Show progress bars on stderr.")
]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder (created if missing).")]
OverlaysOpt = Annotated[
    bool, typer.Option("--overlays/--no-overlays", help="Write heatmap overlay PNGs.")
]
MethodOpt = Annotated[
    Literal[tuple(METHODS)] | None,
    typer.Option(
        "--method",
        help="musc (MuSc: order-free, the best training-free scores on real features), staps "
        "(as published: MuSc maps + BGMPS + STAS, for images in a meaningful order), or "
        "headclip (needs --calibration or a headclip bundle). Default: musc, or a headclip "
        "bundle's method.",
    ),
]
StreamMethodOpt = Annotated[
    Literal[STREAMABLE] | None,
    typer.Option(
        "--method",
        help="musc or staps (each image against a rolling bank of recent ones) or headclip "
        "(each image on its own). Default: musc, or a headclip bundle's method.",
    ),
]
BankOpt = Annotated[
    int,
    typer.Option(
        "--bank",
        min=2,
        help="musc/staps: each image is scored against the last K images. The first K are held "
        "and scored together once the bank is full (warm-up).",
        rich_help_panel=STATION_PANEL,
    ),
]
_SubsetSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--subset-size",
        min=1,
        help="musc/staps: score the images in subsets of about K, each on its own (MuSc's "
        "subsets), every folder shared out over them. Default: as large as --memory-gb allows.",
        rich_help_panel=SCORING_PANEL,
    ),
]
_DivideOpt = Annotated[
    int | None,
    typer.Option(
        "--divide",
        min=1,
        help="musc/staps: score the images in N subsets (MuSc's --divide_num); not with "
        "--subset-size.",
        rich_help_panel=SCORING_PANEL,
    ),
]
_MemoryGbOpt = Annotated[
    float | None,
    typer.Option(
        "--memory-gb",
        min=0.01,
        help="Memory for encoder outputs and mutual scoring, in GB: a set too large for it is "
        "scored in subsets. Default: the memory available when the run starts.",
        rich_help_panel=SCORING_PANEL,
    ),
]
_SUBSET_OPTIONS: dict[str, tuple[Any, Any]] = {
    "size": (_SubsetSizeOpt, None),
    "divide": (_DivideOpt, None),
    "memory_gb": (_MemoryGbOpt, None),
}


def subset_options() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--subset-size, --divide and --memory-gb, given as ``subsets`` (a SubsetRequest)."""
    parameters = [option_parameter(f"sub_{n}", *spec) for n, spec in _SUBSET_OPTIONS.items()]

    def build(values: dict[str, Any]) -> Any:
        from zsad.api.subsets import SubsetRequest  # the scoring stack: not for --help

        return SubsetRequest(**{n: values[f"sub_{n}"] for n in _SUBSET_OPTIONS})

    return option_group("subsets", parameters, build)


ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        help="NG when the score is above this. Default: the bundle's, from `zsad "
        "calibrate-threshold`; without one, results carry scores and no decision.",
        rich_help_panel=STATION_PANEL,
    ),
]

# Shared with `zsad calibrate-threshold --labels`: one label-CSV format for both commands.
FileColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--file-column",
        help="Label CSV column naming the image (default: the first of path, filename, file, "
        "image, name, id). Names without an extension match the one image with that stem.",
    ),
]
LabelColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--label-column",
        help="Label CSV column holding the label: 0/1, good/ok/normal or anomalous/ng/defect/bad "
        "(default: label).",
    ),
]


# ---------------------------------------------------------------------- option groups


def option_parameter(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    """A keyword parameter carrying a typer option, for option groups."""
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def option_group(
    target: str, parameters: list[inspect.Parameter], build: Callable[[dict[str, Any]], Any]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator adding ``parameters`` to a command, which receives ``build(their values,
    the command's other values)`` as its ``target`` argument instead."""
    names = [p.name for p in parameters]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return command(**kwargs, **{target: build({**values, "_command": kwargs})})

        own = [
            p
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.name != target
        ]
        wrapper.__signature__ = inspect.Signature(own + parameters)  # type: ignore[attr-defined]
        return wrapper

    return decorate


_ENCODER_OPTIONS = {
    "model": (ModelOpt, "ViT-L-14-336"),
    "weights": (WeightsOpt, None),
    "pretrained": (PretrainedOpt, None),
    "image_size": (MaybeImageSizeOpt, None),
    "device": (DeviceOpt, "auto"),
    "bundle": (BundleOpt, None),
    "backend": (RuntimeOpt, "auto"),
    "precision": (PrecisionOpt, None),
    "engine": (EngineOpt, None),
    "triton": (TritonOpt, None),
    "triton_model": (TritonModelOpt, None),
    "triton_timeout_s": (TritonTimeoutOpt, 30.0),
    "triton_ca": (TritonCaOpt, None),
    "triton_token_file": (TritonTokenFileOpt, None),
}


def encoder_options(
    only: tuple[str, ...] = tuple(_ENCODER_OPTIONS),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The encoder options (--model ... --engine, or ``only`` these), given as ``encoder``."""
    parameters = [option_parameter(f"enc_{n}", *_ENCODER_OPTIONS[n]) for n in only]

    def build(values: dict[str, Any]) -> EncoderSpec:
        spec = EncoderSpec(**{n: values[f"enc_{n}"] for n in only})
        spec.check_device()
        return spec

    return option_group("encoder", parameters, build)


# (config field, flag, help, extra typer.Option arguments); bool fields become --x/--no-x.
_SCORING_OPTIONS: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("r_list", "--r-list", "LNAMD aggregation degrees r, comma-separated (odd).", {}),
    (
        "topmin_max",
        "--topmin",
        "MSM: fraction of the other images whose distances are averaged.",
        {"min": 0.0, "max": 1.0},
    ),
    (
        "memory_budget_mb",
        "--memory-mb",
        "MSM: upper bound of each temporary buffer, in MB.",
        {"min": 1.0},
    ),
    (
        "align_window",
        "--align-window",
        "MSM for fixtured parts: compare each patch only with the patches within +-W grid cells "
        "of its own position in the other images (~(2W+1)^2/P of the work; 1-3 for parts "
        "held to a few pixels). Reports how much of the parts' nearest-neighbour matching the "
        "window keeps, with a warning when too little, or when 2W+1 spans the whole grid (nearly "
        "global MSM, without the saving). Default: off (global MSM, loose parts).",
        {"kind": int | None, "min": 0},
    ),
    (
        "device",
        "--score-device",
        "LNAMD and MSM on auto, cpu or gpu (CuPy).",
        {"kind": Literal["auto", "cpu", "gpu"]},
    ),
    (
        "image_score",
        "--image-score",
        "Raw image score before RsCIN/STAS: upsampled (MuSc: max of the map upsampled to the "
        "input size) or grid (max of the patch grid, the rule of thresholds stored without an "
        "image_score setting).",
        {"kind": Literal["upsampled", "grid"]},
    ),
    ("rscin_k", "--rscin-k", "RsCIN neighbour counts k (MuSc, or STAPS with --no-stas).", {}),
    (
        "use_stas",
        "--stas",
        "STAPS: STAS image scores (--no-stas: MuSc's RsCIN). STAS assumes the images come in "
        "a meaningful order (see --order).",
        {},
    ),
    ("window", "--window", "STAS: temporal window L (images on each side).", {"min": 0}),
    ("gamma", "--gamma", "STAS: temporal decay gamma^|i-j|.", {"min": 0.0, "max": 1.0}),
    (
        "alpha",
        "--alpha",
        "STAS: weight of semantic vs temporal affinity.",
        {"min": 0.0, "max": 1.0},
    ),
    ("stas_k", "--stas-k", "STAS: neighbour counts k, comma-separated.", {}),
    (
        "beta",
        "--beta",
        "STAS: EMA factor along the sequence (0 disables the EMA).",
        {"min": 0.0, "max": 1.0},
    ),
    (
        "stas_semantic",
        "--stas-semantic",
        "STAS: semantic affinity from the CLS cosines: rescale (min-max over the set's cosine "
        "matrix, or the images in a rolling bank, as STAPS states) or clip (max(cos, 0)).",
        {"kind": Literal["rescale", "clip"]},
    ),
    (
        "order",
        "--order",
        "STAS sequence: shuffle (seeded) or input (the order the images were given in).",
        {"kind": Literal["shuffle", "input"]},
    ),
    ("use_bgmps", "--bgmps", "STAPS: BGMPS map fusion (--no-bgmps: mean of all maps).", {}),
    (
        "embed",
        "--embed",
        "BGMPS: expert embedding, dct or svd.",
        {"kind": Literal["dct", "svd"]},
    ),
    (
        "cluster",
        "--cluster",
        "BGMPS: clustering, bgmm or kmeans.",
        {"kind": Literal["bgmm", "kmeans"]},
    ),
    ("dim", "--dim", "BGMPS: embedding dimension d.", {"min": 1}),
    ("n_components", "--components", "BGMPS: upper bound on the number of clusters.", {"min": 1}),
    (
        "top_percent",
        "--top-percent",
        "BGMPS: evidence = mean of the top p% map values.",
        {"min": 0.0, "max": 100.0},
    ),
)
# Parameter names are prefixed so they never clash with a command's own (e.g. --device).
_PREFIX = "scoring_"
# The scoring options that make no sense on a stream: it has no set to fuse or order.
STREAM_EXCLUDED = ("order", "use_bgmps", "embed", "cluster", "dim", "n_components", "top_percent")


def _scoring_defaults() -> dict[str, Any]:
    return {f.name: getattr(SetScoringConfig(), f.name) for f in fields(SetScoringConfig)}


def _scoring_parameter(
    name: str, flag: str, help_text: str, extra: dict[str, Any], default: Any
) -> inspect.Parameter:
    if isinstance(default, bool):
        decls = [f"{flag}/--no-{flag[2:]}"]
        kind = bool
    elif isinstance(default, tuple):
        decls, kind, default = [flag], str, ",".join(str(v) for v in default)
    else:
        decls, kind = [flag], type(default)
    extra = dict(extra)
    kind = extra.pop("kind", kind)
    option = typer.Option(*decls, help=help_text, rich_help_panel=SCORING_PANEL, **extra)
    return option_parameter(_PREFIX + name, Annotated[kind, option], default)


def int_tuple(flag: str, text: str) -> tuple[int, ...]:
    """Comma-separated positive integers given to ``flag``, with a one-line error."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ZsadError(f"{flag} {text!r}: expected comma-separated positive integers")
    return values


def build_scoring(values: dict[str, Any], seed: int) -> Any:
    """Turn parsed option values into a SetScoringConfig, with one-line errors."""
    flags = {name: flag for name, flag, _, _ in _SCORING_OPTIONS}
    for name, default in _scoring_defaults().items():
        if isinstance(default, tuple) and isinstance(values.get(name), str):
            values[name] = int_tuple(flags[name], values[name])
    if any(r % 2 == 0 for r in values.get("r_list", ())):
        raise ZsadError(f"--r-list {values['r_list']}: aggregation degrees must be odd")
    try:
        return SetScoringConfig(**values, seed=seed)
    except ValueError as exc:
        raise ZsadError(f"scoring options: {exc}") from exc


def scoring_options(
    exclude: tuple[str, ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The training-free scoring options, given as ``scoring`` (a SetScoringConfig); ``exclude``
    ones keep their default."""
    start = _scoring_defaults()
    options = [option for option in _SCORING_OPTIONS if option[0] not in exclude]
    names = [option[0] for option in options]
    fixed = {name: start[name] for name, *_ in _SCORING_OPTIONS if name in exclude}
    parameters = [_scoring_parameter(*option, start[option[0]]) for option in options]

    def build(values: dict[str, Any]) -> Any:
        chosen = {**fixed, **{name: values[_PREFIX + name] for name in names}}
        return build_scoring(chosen, values["_command"].get("seed", 0))

    return option_group("scoring", parameters, build)


_HEADCLIP_OPTIONS = {
    "calibration": (
        Annotated[
            Path | None,
            typer.Option(
                "--calibration",
                help="HeadCLIP artifact from `zsad calibrate` (torch path).",
                rich_help_panel=HEADCLIP_PANEL,
            ),
        ],
        None,
    ),
    "jas_r": (
        Annotated[
            float | None,
            typer.Option(
                "--jas-r",
                min=0.0,
                max=1.0,
                help="JAS weight of the global (CLS) score; 1 = no JAS. Default: the artifact's.",
                rich_help_panel=HEADCLIP_PANEL,
            ),
        ],
        None,
    ),
    "top_k": (
        Annotated[
            float | None,
            typer.Option(
                "--top-k",
                min=0.0,
                max=100.0,
                help="JAS: percent of the highest map pixels averaged. Default: the artifact's.",
                rich_help_panel=HEADCLIP_PANEL,
            ),
        ],
        None,
    ),
}


_TRAINED_WITH = (
    " Training (zsad calibrate) defaults to the residual path; elsewhere the default is the "
    "calibration's, and another value is an error."
)
_LOCAL_PATH_OPTIONS = {
    "local_path": (
        Annotated[
            Literal["residual", "sum"] | None,
            typer.Option(
                "--local-path",
                help="HeadCLIP local path: residual (AnomalyCLIP's code: a second residual "
                "stream, the stream entering the first CSA block plus each CSA output) or sum "
                "(the paper's eq. 6: the sum of the CSA outputs)." + _TRAINED_WITH,
                rich_help_panel=HEADCLIP_PANEL,
            ),
        ],
        None,
    ),
    "csa_layers": (
        Annotated[
            str | None,
            typer.Option(
                "--csa-layers",
                help="HeadCLIP: 0-based blocks running CSA, e.g. 5-23 (residual's default for "
                "24 blocks; sum: 5-19; scaled for other depths)." + _TRAINED_WITH,
                rich_help_panel=HEADCLIP_PANEL,
            ),
        ],
        None,
    ),
    "readout_layers": (
        Annotated[
            str | None,
            typer.Option(
                "--readout-layers",
                help="HeadCLIP: 0-based blocks after which the local tokens are read, one map "
                "each, averaged; e.g. 5,11,17,23 for the paper's Table 7 setting '6, 12, 18, "
                "24'. Default: the last CSA block." + _TRAINED_WITH,
                rich_help_panel=HEADCLIP_PANEL,
            ),
        ],
        None,
    ),
}


def _local_path_values(values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The local-path options as MethodOptions/CalibrationConfig fields (None: not given)."""
    chosen = {n: values[prefix + n] for n in _LOCAL_PATH_OPTIONS}
    for name in ("csa_layers", "readout_layers"):
        if chosen[name] is not None:
            chosen[name] = parse_layers(f"--{name.replace('_', '-')}", chosen[name])
    return chosen


def local_path_options() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--local-path, --csa-layers and --readout-layers, given as ``local_path`` (a dict)."""
    parameters = [option_parameter(f"lp_{n}", *spec) for n, spec in _LOCAL_PATH_OPTIONS.items()]
    return option_group("local_path", parameters, lambda v: _local_path_values(v, "lp_"))


@dataclass(frozen=True)
class HeadclipFlags:
    """--calibration, --jas-r, --top-k and the local-path options as given."""

    calibration: Path | None = None
    jas_r: float | None = None
    top_k: float | None = None
    local_path: dict[str, Any] | None = None

    def options(self, scoring: Any) -> Any:
        """MethodOptions with these HeadCLIP choices and ``scoring``."""
        from zsad.api.scorers import MethodOptions

        return MethodOptions(scoring, self.jas_r, self.top_k, **(self.local_path or {}))


def headclip_options(
    calibration: bool = True,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The HeadCLIP options (with --calibration unless told not), given as ``headclip``."""
    names = ("calibration", "jas_r", "top_k") if calibration else ("jas_r", "top_k")
    parameters = [option_parameter(f"hc_{n}", *_HEADCLIP_OPTIONS[n]) for n in names]
    parameters += [option_parameter(f"hc_{n}", *spec) for n, spec in _LOCAL_PATH_OPTIONS.items()]

    def build(values: dict[str, Any]) -> HeadclipFlags:
        flags = {n: values[f"hc_{n}"] for n in names}
        return HeadclipFlags(**flags, local_path=_local_path_values(values, "hc_"))

    return option_group("headclip", parameters, build)


_RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="ADDRESS",
        help="Score the subsets on Ray (the ray extra): local (a new instance on this machine, "
        "on 127.0.0.1 only, with 2 CPUs or --ray-workers), auto (the cluster this machine is "
        "in), ray://HOST:PORT or HOST:PORT. Needs --bundle or --engine; the bundle and the "
        "images must be at the same paths on every node. Same results as without --ray.",
        rich_help_panel=SCALE_PANEL,
    ),
]
_RayWorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--ray-workers",
        min=1,
        help="With --ray: how many encoder actors (default: one per GPU of the cluster, else "
        "one per CPU).",
        rich_help_panel=SCALE_PANEL,
    ),
]
_GroupByOpt = Annotated[
    str | None,
    typer.Option(
        "--group-by",
        help="Score each group of images on its own, a product or a lot (no subset mixes "
        "groups): folder (each image's folder) or CSV:COLUMN (a CSV with a file column, path "
        "or filename, and COLUMN naming each image's group).",
        rich_help_panel=SCALE_PANEL,
    ),
]
_ParquetOpt = Annotated[
    bool,
    typer.Option(
        "--parquet",
        help="Also write OUT/results.parquet: the rows of results.jsonl (needs pyarrow).",
        rich_help_panel=SCALE_PANEL,
    ),
]

_SCALE_OPTIONS: dict[str, tuple[Any, Any]] = {
    "group_by": (_GroupByOpt, None),
    "ray": (_RayOpt, None),
    "ray_workers": (_RayWorkersOpt, None),
    "parquet": (_ParquetOpt, False),
}


@dataclass(frozen=True)
class ScaleFlags:
    """--group-by, --ray, --ray-workers and --parquet as given."""

    group_by: str | None = None
    ray: str | None = None
    ray_workers: int | None = None
    parquet: bool = False

    @property
    def given(self) -> bool:
        """Whether any of them was given."""
        return self != ScaleFlags()


def scale_options() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--group-by, --ray, --ray-workers and --parquet, given as ``scale`` (ScaleFlags)."""
    parameters = [option_parameter(f"sc_{n}", *spec) for n, spec in _SCALE_OPTIONS.items()]

    def build(values: dict[str, Any]) -> ScaleFlags:
        flags = ScaleFlags(**{n: values[f"sc_{n}"] for n in _SCALE_OPTIONS})
        if flags.ray_workers is not None and flags.ray is None:
            raise ZsadError("--ray-workers: only with --ray")
        return flags

    return option_group("scale", parameters, build)


LINE_PANEL = "Line interfaces (MQTT, OPC UA, HTTP)"


def _line_option(flag: str, annotation: Any, help: str, **extra: Any) -> Any:
    return Annotated[annotation, typer.Option(flag, help=help, rich_help_panel=LINE_PANEL, **extra)]


_LINE_OPTIONS: dict[str, tuple[Any, Any]] = {
    "mqtt": (
        _line_option(
            "--mqtt",
            str | None,
            "Publish every result to an MQTT broker: mqtt://HOST:1883 or mqtts://HOST:8883 "
            "(QoS 1, in order, at least once; resumes after outages and restarts). No "
            "user:password@ here: see --mqtt-username and --mqtt-password-file.",
        ),
        None,
    ),
    "mqtt_topic": (
        _line_option(
            "--mqtt-topic",
            str,
            "Topic prefix: results go to PREFIX/results, the retained status (and the "
            "'offline' last will) to PREFIX/status.",
        ),
        "zsad/station",
    ),
    "mqtt_username": (_line_option("--mqtt-username", str | None, "Broker user name."), None),
    "mqtt_password_file": (
        _line_option(
            "--mqtt-password-file",
            Path | None,
            "File whose first line is the broker password (default: $ZSAD_MQTT_PASSWORD).",
        ),
        None,
    ),
    "mqtt_ca": (
        _line_option("--mqtt-ca", Path | None, "CA certificate (PEM) to verify the broker's TLS."),
        None,
    ),
    "mqtt_client_id": (
        _line_option("--mqtt-client-id", str | None, "MQTT client id (default: from the topic)."),
        None,
    ),
    "opcua": (
        _line_option(
            "--opcua",
            str | None,
            "Serve the station over OPC UA at this endpoint, e.g. opc.tcp://127.0.0.1:4840.",
        ),
        None,
    ),
    "opcua_security": (
        _line_option(
            "--opcua-security",
            Literal["none", "sign", "sign-and-encrypt"],
            "Basic256Sha256 Sign or SignAndEncrypt with --opcua-cert/--opcua-key; 'none' "
            "serves without security to anonymous clients.",
        ),
        "sign-and-encrypt",
    ),
    "opcua_cert": (
        _line_option(
            "--opcua-cert",
            Path | None,
            "Server certificate (DER or PEM) with its application URI in subjectAltName.",
        ),
        None,
    ),
    "opcua_key": (
        _line_option("--opcua-key", Path | None, "Server private key (RSA, unencrypted)."),
        None,
    ),
    "opcua_trust": (
        _line_option(
            "--opcua-trust",
            Path | None,
            "Folder of the client certificates admitted (default: any client certificate).",
        ),
        None,
    ),
    "http": (
        _line_option(
            "--http",
            str | None,
            "Serve the HTTP API and the operator page at HOST:PORT (e.g. 127.0.0.1:8080).",
        ),
        None,
    ),
    "http_token_file": (
        _line_option(
            "--http-token-file",
            Path | None,
            "File whose first line is the token that changes (a new threshold) need "
            "(default: $ZSAD_HTTP_TOKEN; without one the API is read-only).",
        ),
        None,
    ),
    "http_allow_host": (
        _line_option(
            "--http-allow-host",
            list[str] | None,
            "A host name browsers use to reach the page (repeatable), taken beside the bound "
            "address and localhost; requests naming any other Host are refused (DNS rebinding).",
        ),
        None,
    ),
}


def line_options() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The MQTT, OPC UA and HTTP options of a station, given as ``line`` (a LineConfig)."""
    parameters = [option_parameter(f"line_{n}", *spec) for n, spec in _LINE_OPTIONS.items()]

    def build(values: dict[str, Any]) -> LineConfig:
        v = {name: values[f"line_{name}"] for name in _LINE_OPTIONS}
        config = LineConfig(
            mqtt=None
            if v["mqtt"] is None
            else MqttConfig(
                v["mqtt"],
                v["mqtt_topic"],
                v["mqtt_username"],
                v["mqtt_password_file"],
                v["mqtt_ca"],
                v["mqtt_client_id"],
            ),
            opcua=None
            if v["opcua"] is None
            else OpcuaConfig(
                v["opcua"], v["opcua_security"], v["opcua_cert"], v["opcua_key"], v["opcua_trust"]
            ),
            http=None
            if v["http"] is None
            else HttpConfig(v["http"], v["http_token_file"], tuple(v["http_allow_host"] or ())),
        )
        config.check()
        return config

    return option_group("line", parameters, build)


CAMERA_PANEL = "Camera (--source genicam://, aravis:// or rtsp://)"


def _camera_option(flag: str, annotation: Any, help: str, **extra: Any) -> Any:
    return Annotated[
        annotation, typer.Option(flag, help=help, rich_help_panel=CAMERA_PANEL, **extra)
    ]


_CAMERA_OPTIONS: dict[str, tuple[Any, Any]] = {
    "source": (
        _camera_option(
            "--source",
            str | None,
            "Where frames come from: a hot folder (as IN_DIR), genicam://PRODUCER.cti "
            "[?serial=S|index=N] (GigE Vision / USB3 Vision through the vendor's GenTL producer), "
            "aravis://[DEVICE-ID] (GigE Vision / USB3 Vision through Aravis) or "
            "rtsp://HOST[:PORT]/PATH. Camera frames are kept under OUT/frames.",
        ),
        None,
    ),
    "camera_set": (
        _camera_option(
            "--camera-set",
            list[str] | None,
            "NAME=VALUE: a GenICam feature written before acquisition, in order (repeatable), "
            "e.g. ExposureTime=5000 or PixelFormat=BayerRG8.",
        ),
        None,
    ),
    "trigger": (
        _camera_option(
            "--trigger",
            str,
            "free (the camera's frame rate), software (one frame per trigger from the line: "
            "OPC UA Trigger, MQTT PREFIX/trigger, POST /api/trigger) or hardware[:LINE] (the "
            "camera's input line, Line0 by default).",
        ),
        "free",
    ),
    "trigger_timeout": (
        _camera_option(
            "--trigger-timeout",
            float,
            "Seconds a software trigger waits for its frame; then it is journalled as rejected "
            "with its part id, so the line sees a result for every trigger taken.",
            min=0.001,
        ),
        5.0,
    ),
    "keep_frames": (
        _camera_option(
            "--keep-frames",
            Literal["ng", "all", "none"],
            "Scored frames kept under OUT/frames (ng/ or ok/), linked from their record.",
        ),
        "ng",
    ),
    "frames_budget_gb": (
        _camera_option(
            "--frames-budget-gb",
            float | None,
            "Disk the kept frames may take; over it the oldest OK frames are deleted first, NG "
            "frames only when no OK frame is left (default: no bound).",
            min=0.000001,
        ),
        None,
    ),
    "camera_user": (_camera_option("--camera-user", str | None, "RTSP user name."), None),
    "camera_password_file": (
        _camera_option(
            "--camera-password-file",
            Path | None,
            "File whose first line is the RTSP password (default: $ZSAD_CAMERA_PASSWORD).",
        ),
        None,
    ),
}


def camera_options() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--source and the camera options, given as ``source``: a CameraConfig for a camera, the
    folder's Path for a hot folder, None without --source."""
    parameters = [option_parameter(f"cam_{n}", *spec) for n, spec in _CAMERA_OPTIONS.items()]

    def build(values: dict[str, Any]) -> CameraConfig | Path | None:
        v = {name: values[f"cam_{name}"] for name in _CAMERA_OPTIONS}
        source = v["source"]
        if source is None or "://" not in source:
            given = [
                flag
                for flag, name in (
                    ("--camera-set", "camera_set"),
                    ("--frames-budget-gb", "frames_budget_gb"),
                    ("--camera-user", "camera_user"),
                    ("--camera-password-file", "camera_password_file"),
                )
                if v[name]
            ]
            if v["trigger"] != "free":
                given.append("--trigger")
            if v["trigger_timeout"] != CameraConfig.trigger_timeout_s:
                given.append("--trigger-timeout")
            if given:
                raise ZsadError(
                    f"{given[0]}: only with a camera --source (genicam://, aravis:// or rtsp://)"
                )
            return None if source is None else Path(source)
        budget = v["frames_budget_gb"]
        config = CameraConfig(
            source,
            parse_settings(v["camera_set"] or []),
            v["trigger"],
            v["keep_frames"],
            None if budget is None else int(budget * 1e9),
            v["camera_user"],
            v["camera_password_file"],
            v["trigger_timeout"],
        )
        config.check()
        return config

    return option_group("source", parameters, build)
