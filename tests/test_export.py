"""zsad export on the tiny model: both methods, parity, the FP16 outlier stress test, engines."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from zsad.errors import ZsadError
from zsad.export import parity
from zsad.export.fp16 import convert_to_fp16
from zsad.export.pipeline import export_bundle, export_model
from zsad.formats.artifact import HeadclipArtifact, save_artifact
from zsad.formats.bundle import Bundle
from zsad.formats.local_path import LocalPath
from zsad.formats.methods import METHODS
from zsad.model import DualPathEncoder, load_clip
from zsad.runtime.open import open_backend

SIZE = 56
OUTLIER_CHANNELS = [3, 17, 42]


def _has_rtx() -> bool:
    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError:
        return False
    return True


# Two read-outs of the residual stream: the bundle must carry one local map source per block.
LOCAL_PATH = LocalPath("residual", (2, 3, 4, 5, 6, 7), (4, 7))


def _encoder(
    method: str, clip: torch.nn.Module | None = None, local_path: LocalPath | None = None
) -> DualPathEncoder:
    clip = clip if clip is not None else load_clip("zsad-tiny", seed=0)
    if local_path is None and method == "headclip":
        local_path = LOCAL_PATH
    return DualPathEncoder(
        clip, image_size=SIZE, local_path=local_path, outputs=METHODS[method].outputs
    )


def _quiet(message: str) -> None:
    del message


@pytest.fixture(scope="module")
def staps_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("staps")
    engine = "rtx" if _has_rtx() else "none"
    export_bundle(
        _encoder("staps"),
        out,
        backbone="zsad-tiny",
        method="staps",
        engine=engine,
        compute_capabilities=("7.5", "8.6") if engine == "rtx" else (),
        max_batch=4,
        log=_quiet,
    )
    return out


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, HeadclipArtifact]:
    rng = np.random.default_rng(3)
    text = rng.standard_normal((2, 64)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    art = HeadclipArtifact(
        text_embeddings=text,
        head_weights=rng.uniform(0.2, 1.8, size=(6, 4)).astype(np.float32),
        backbone="zsad-tiny",
        image_size=SIZE,
        local_path=LOCAL_PATH,
        hyperparameters={"jas_r": 0.5, "top_k": 1.0, "temperature": 0.07, "sigma": 4.0},
    )
    path = tmp_path_factory.mktemp("artifact") / "headclip.safetensors"
    save_artifact(path, art)
    return path, art


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)}
    types.update({v.name: v.type.tensor_type.elem_type for v in graph.value_info})
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def test_staps_bundle_is_complete_and_checked(staps_bundle: Path) -> None:
    meta = json.loads((staps_bundle / "bundle.json").read_text())
    assert meta["method"] == "staps" and meta["outputs"] == ["cls", "taps"]
    assert meta["image_size"] == SIZE and meta["grid"] == SIZE // 14
    assert meta["taps"] == [1, 3, 5, 7] and meta["opset"] >= 17
    assert meta["output_shapes"]["taps"] == ["batch", 4, 1 + (SIZE // 14) ** 2, 64]
    for numbers in meta["parity"]["fp32_vs_torch"].values():
        assert numbers["cosine"] >= parity.FP32_MIN_COSINE
    for numbers in meta["parity"]["fp16_vs_fp32"].values():
        assert numbers["cosine"] >= parity.FP16_MIN_COSINE
    assert {"torch", "onnx", "onnxruntime"} <= set(meta["tools"])
    bundle = Bundle.load(staps_bundle)
    for name in ("encoder.onnx", "encoder.fp16.onnx"):
        bundle.file(name)  # hashes match
        model = onnx.load(str(staps_bundle / name))
        onnx.checker.check_model(model)
        batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param and not batch_dim.dim_value
        assert sum(n.op_type == "LayerNormalization" for n in model.graph.node) == 8 * 2 + 2


def test_fp16_file_is_fp16_with_fp32_islands(staps_bundle: Path) -> None:
    model = onnx.load(str(staps_bundle / "encoder.fp16.onnx"))
    types = _value_types(model)
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "ReduceL2"):
            assert types[node.input[0]] == TensorProto.FLOAT, node.name
            assert types[node.output[0]] == TensorProto.FLOAT, node.name
        if node.op_type in ("MatMul", "Gemm", "Conv"):
            assert all(types[i] == TensorProto.FLOAT16 for i in node.input), node.name
    assert all(
        types[v.name] == TensorProto.FLOAT for v in (*model.graph.input, *model.graph.output)
    )


def test_onnx_runtime_matches_pytorch_on_new_inputs(staps_bundle: Path) -> None:
    encoder = _encoder("staps")
    pixels = parity.check_batch(SIZE, n=3, seed=7)
    with torch.inference_mode():
        out = encoder(torch.from_numpy(pixels))
    reference = {"cls": out.cls.numpy(), "taps": out.taps.numpy()}
    fp32 = open_backend(staps_bundle / "encoder.onnx", device="cpu").run(pixels)
    fp16 = open_backend(staps_bundle / "encoder.fp16.onnx", device="cpu").run(pixels)
    for numbers in parity.compare(reference, fp32).values():
        assert numbers["cosine"] >= parity.FP32_MIN_COSINE
    for numbers in parity.compare(fp32, fp16).values():
        assert numbers["cosine"] >= parity.FP16_MIN_COSINE


@pytest.mark.skipif(not _has_rtx(), reason="tensorrt-rtx-cu12 is not installed (zsad[rtx])")
def test_rtx_engine_builds_without_a_gpu_and_is_recorded(staps_bundle: Path) -> None:
    import tensorrt_rtx

    meta = json.loads((staps_bundle / "bundle.json").read_text())
    engine = meta["engine"]
    assert engine["flavour"] == "rtx" and engine["tensorrt_version"] == tensorrt_rtx.__version__
    assert engine["compute_capabilities"] == ["7.5", "8.6"]
    assert engine["batch"] == {"min": 1, "opt": 4, "max": 4}
    assert engine["source"] == "encoder.fp16.onnx" and engine["build_seconds"] > 0
    assert (
        meta["files"]["encoder.engine"]["bytes"] == (staps_bundle / "encoder.engine").stat().st_size
    )
    assert meta["tools"]["tensorrt-rtx-cu12"] == tensorrt_rtx.__version__
    assert Bundle.load(staps_bundle).engine.file == "encoder.engine"  # type: ignore[union-attr]


@pytest.mark.slow
def test_headclip_export_bakes_the_head_weights(
    tmp_path: Path, artifact: tuple[Path, HeadclipArtifact]
) -> None:
    path, art = artifact
    meta = export_bundle(
        _encoder("headclip"),
        tmp_path,
        backbone="zsad-tiny",
        method="headclip",
        calibration=path,
        log=_quiet,
    )
    assert meta["outputs"] == ["cls", "local"]
    assert meta["local_path"] == LOCAL_PATH.to_meta()
    assert meta["output_shapes"]["local"] == ["batch", 2, (SIZE // 14) ** 2, 64]
    assert meta["calibration"]["file"] == "calibration.safetensors"
    for numbers in meta["parity"]["fp16_vs_fp32"].values():
        assert numbers["cosine"] >= parity.FP16_MIN_COSINE

    pixels = parity.check_batch(SIZE, n=2, seed=5)
    local = open_backend(tmp_path, device="cpu").run(pixels)["local"]
    calibrated, plain = _encoder("headclip"), _encoder("headclip")
    with torch.no_grad():
        calibrated.head_weights.copy_(torch.from_numpy(art.head_weights))
        expected = calibrated(torch.from_numpy(pixels)).local.numpy()
        unweighted = plain(torch.from_numpy(pixels)).local.numpy()
    np.testing.assert_allclose(local, expected, atol=2e-5)
    assert np.abs(local - unweighted).max() > 1e-2  # the weights changed the output

    from zsad.formats.artifact import load_artifact

    bundle = Bundle.load(tmp_path)
    copied = load_artifact(bundle.file(bundle.calibration))  # type: ignore[arg-type]
    np.testing.assert_array_equal(copied.text_embeddings, art.text_embeddings)

    # The torch-free runtime scores both read-outs: one map each, averaged.
    from zsad.api.detector import Detector
    from zsad.scoring.headclip import score_headclip

    image = (np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    with Detector.from_bundle(tmp_path, device="cpu") as detector:
        result = detector.predict(image)
        outputs = detector.encode_one(image)
    assert outputs["local"].shape == (1, 2, (SIZE // 14) ** 2, 64)
    score, maps = score_headclip(
        outputs["cls"], outputs["local"], art.text_embeddings, image_size=SIZE
    )
    np.testing.assert_allclose(result.anomaly_map, maps[0], atol=1e-6)
    _, first_only = score_headclip(
        outputs["cls"], outputs["local"][:, :1], art.text_embeddings, image_size=SIZE
    )
    assert np.abs(first_only - maps).max() > 1e-4

    # A bundle whose encoder and calibration disagree on the local path is refused.
    meta = json.loads((tmp_path / "bundle.json").read_text())
    meta["local_path"] = {**meta["local_path"], "readout_layers": [7]}
    (tmp_path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ZsadError, match="its calibration was trained with residual"):
        Detector.from_bundle(tmp_path, device="cpu")
    # A bundle.json from before the variants: the sum, read after the last CSA block.
    del meta["local_path"]
    meta["csa_layers"] = [2, 3, 4, 5, 6]
    (tmp_path / "bundle.json").write_text(json.dumps(meta))
    assert Bundle.load(tmp_path).local_path == LocalPath("sum", (2, 3, 4, 5, 6), (6,))


def test_headclip_export_refuses_missing_or_mismatched_artifacts(
    tmp_path: Path, artifact: tuple[Path, HeadclipArtifact]
) -> None:
    path, art = artifact
    with pytest.raises(ZsadError, match="needs --calibration"):
        export_bundle(_encoder("headclip"), tmp_path, backbone="zsad-tiny", method="headclip")
    with pytest.raises(ZsadError, match="not ViT-B-16"):
        export_bundle(
            _encoder("headclip"), tmp_path, backbone="ViT-B-16", method="headclip", calibration=path
        )
    other = tmp_path / "other.safetensors"
    summed = LocalPath("sum", LOCAL_PATH.csa_layers, LOCAL_PATH.readout_layers)
    save_artifact(other, HeadclipArtifact(**{**art.__dict__, "local_path": summed}))
    with pytest.raises(ZsadError, match="trained with local path sum"):
        export_bundle(
            _encoder("headclip"),
            tmp_path,
            backbone="zsad-tiny",
            method="headclip",
            calibration=other,
        )
    with pytest.raises(ZsadError, match="only --method headclip"):
        export_bundle(
            _encoder("staps"), tmp_path, backbone="zsad-tiny", method="staps", calibration=path
        )
    # export_model builds the encoder from the artifact; a different request is an error.
    with pytest.raises(ZsadError, match="--readout-layers 7: .* trained with local path"):
        export_model(
            tmp_path,
            model="zsad-tiny",
            method="headclip",
            image_size=SIZE,
            calibration=path,
            local_path={"readout_layers": (7,)},
            log=_quiet,
        )
    assert not (tmp_path / "bundle.json").exists()


def _outlier_clip() -> torch.nn.Module:
    """zsad-tiny whose residual stream carries a few channels of magnitude ~300, as CLIP ViT-L."""
    clip = load_clip("zsad-tiny", seed=0)
    with torch.no_grad():
        for block in clip.visual.transformer.resblocks[:2]:
            block.mlp.c_proj.bias[OUTLIER_CHANNELS] += 150.0
    return clip


def _strict(path: Path | onnx.ModelProto, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Run with ONNX's reference evaluator: every op computes in its declared type, as in a
    strongly typed TensorRT network (ONNX Runtime's CPU kernels upcast FP16 internally)."""
    from onnx.reference import ReferenceEvaluator

    session = ReferenceEvaluator(str(path) if isinstance(path, Path) else path)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        values = session.run(None, {"pixels": pixels})
    return dict(zip(session.output_names, values, strict=True))


@pytest.mark.slow
def test_fp16_parity_holds_with_outlier_activations(tmp_path: Path) -> None:
    encoder = _encoder("staps", _outlier_clip())
    pixels = parity.check_batch(SIZE, n=2, seed=1)
    with torch.inference_mode():
        taps = encoder(torch.from_numpy(pixels)).taps.numpy()
    normal = [c for c in range(taps.shape[-1]) if c not in OUTLIER_CHANNELS]
    assert np.abs(taps[..., OUTLIER_CHANNELS]).max() > 250
    assert np.abs(taps[..., normal]).max() < 20

    meta = export_bundle(encoder, tmp_path, backbone="zsad-tiny", method="staps", log=_quiet)
    for numbers in meta["parity"]["fp16_vs_fp32"].values():
        assert numbers["cosine"] >= parity.FP16_MIN_COSINE

    reference = _strict(tmp_path / "encoder.onnx", pixels)
    islands = parity.compare(reference, _strict(tmp_path / "encoder.fp16.onnx", pixels))
    naive_model = convert_to_fp16(onnx.load(str(tmp_path / "encoder.onnx")), fp32_ops=frozenset())
    naive = parity.compare(reference, _strict(naive_model, pixels))
    print(f"strict FP16 vs FP32: islands {islands}; naive {naive}", file=sys.stderr)
    assert all(v["cosine"] >= parity.FP16_MIN_COSINE for v in islands.values())
    # Without FP32 islands the LayerNorm statistics overflow FP16: the check must catch it.
    assert parity.failures(naive, parity.FP16_MIN_COSINE)


def test_missing_tensorrt_flavour_names_the_package(
    staps_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zsad.export.engine import build_engine

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(ZsadError, match=r"pip install 'zsad\[trt\]'"):
        build_engine(
            staps_bundle / "encoder.fp16.onnx",
            staps_bundle / "x.engine",
            flavour="trt",
            image_size=SIZE,
        )


@pytest.mark.skipif(not _has_rtx(), reason="tensorrt-rtx-cu12 is not installed (zsad[rtx])")
def test_unsupported_compute_capability_is_an_error(staps_bundle: Path) -> None:
    from zsad.export.engine import build_engine, parse_compute_capabilities

    with pytest.raises(ZsadError, match="targets 7.5, 8.0"):
        build_engine(
            staps_bundle / "encoder.fp16.onnx",
            staps_bundle / "x.engine",
            flavour="rtx",
            image_size=SIZE,
            compute_capabilities=parse_compute_capabilities("9.0"),
        )
    with pytest.raises(ZsadError, match="MAJOR.MINOR"):
        parse_compute_capabilities("86")


@pytest.fixture(scope="module")
def engine_on_this_gpu(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A bundle with an engine for this GPU from whichever TensorRT flavour can target it (its
    directory and a description), or skip saying why none can."""
    from zsad.export.engine import RTX_DEFAULT_TARGETS
    from zsad.runtime.tensorrt_backend import gpu_compute_capability, import_tensorrt

    try:
        capability, gpu = gpu_compute_capability(0)
    except ZsadError as exc:
        pytest.skip(f"cannot ask the CUDA driver for the GPU: {exc}")
    rtx_targets = ("7.5", *RTX_DEFAULT_TARGETS)
    flavours, missing = [], []
    if not _has_rtx():
        missing.append("TensorRT-RTX is not installed (zsad[rtx])")
    elif capability not in rtx_targets:
        missing.append(
            f"TensorRT-RTX targets compute {', '.join(rtx_targets)}, not {gpu}'s {capability}"
        )
    else:
        flavours.append("rtx")
    try:
        import_tensorrt("trt")
        flavours.append("trt")
    except ZsadError:
        missing.append("full TensorRT is not installed (zsad[trt])")
    if not flavours:
        pytest.skip("no TensorRT engine for this GPU: " + "; ".join(missing))
    flavour, out = flavours[0], tmp_path_factory.mktemp("gpu-engine")
    export_bundle(
        _encoder("staps"),
        out,
        backbone="zsad-tiny",
        method="staps",
        engine=flavour,
        compute_capabilities=(capability,) if flavour == "rtx" else (),
        max_batch=4,
        log=_quiet,
    )
    return out, f"{flavour} engine on {gpu} (compute {capability})"


@pytest.mark.gpu
def test_engine_on_this_gpu_matches_onnx_runtime_fp32(engine_on_this_gpu: tuple[Path, str]) -> None:
    out, what = engine_on_this_gpu
    pixels = parity.check_batch(SIZE, n=6, seed=2)  # more than max_batch: chunked
    reference = open_backend(out / "encoder.onnx", device="cpu").run(pixels)
    with open_backend(out / "encoder.engine", device="cuda") as engine:
        numbers = parity.compare(reference, engine.run(pixels))
    print(f"{what}: {numbers}", file=sys.stderr)
    for values in numbers.values():
        assert values["cosine"] >= parity.ENGINE_MIN_COSINE


@pytest.mark.gpu
def test_engine_outputs_left_on_the_gpu_equal_the_host_outputs(
    engine_on_this_gpu: tuple[Path, str], cupy_device
) -> None:
    from zsad.runtime.tensorrt_backend import TensorRTBackend

    out, _ = engine_on_this_gpu
    pixels = parity.check_batch(SIZE, n=6, seed=3)
    bundle = Bundle.load(out)
    with TensorRTBackend(bundle, "encoder.engine", device="cuda") as engine:
        host = engine.run(pixels)
    with TensorRTBackend(bundle, "encoder.engine", device="cuda", outputs_on="device") as engine:
        device = engine.run(pixels)
        for name, value in device.items():
            assert isinstance(value, cupy_device.ndarray) and value.dtype == np.float32
            np.testing.assert_allclose(value.get(), host[name], rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_onnx_runtime_cuda_runs_the_fp16_file(staps_bundle: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider (install zsad[gpu])")
    backend = open_backend(staps_bundle, device="cuda")
    assert backend.name == "onnxruntime-fp16-cuda"
    pixels = parity.check_batch(SIZE, n=2, seed=4)
    reference = open_backend(staps_bundle / "encoder.onnx", device="cpu").run(pixels)
    for values in parity.compare(reference, backend.run(pixels)).values():
        assert values["cosine"] >= parity.ENGINE_MIN_COSINE
