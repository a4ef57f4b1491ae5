"""`zsad export`: encoder -> FP32 ONNX -> FP16 ONNX -> optional engine, checked, as one bundle."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsad.errors import ZsadError
from zsad.export import parity
from zsad.export.engine import add_engine
from zsad.export.fp16 import FP32_ISLANDS, convert_to_fp16
from zsad.export.onnx_export import INPUT_NAME, OPSET, export_onnx, save_model
from zsad.formats.artifact import load_artifact
from zsad.formats.backbones import get_arch
from zsad.formats.bundle import (
    BUNDLE_JSON,
    ENGINE_FILE,
    FORMAT,
    FP16_ONNX,
    FP32_ONNX,
    sha256_file,
    write_meta,
)
from zsad.formats.methods import DEFAULT_METHOD, get_method
from zsad.model import build_encoder, load_backbone
from zsad.model.encoder import DualPathEncoder
from zsad.model.loading import default_tag
from zsad.model.vit import TapEncoder
from zsad.runtime.preprocess import OPENAI_MEAN, OPENAI_STD
from zsad.runtime.tensorrt_backend import import_tensorrt

CALIBRATION_FILE = "calibration.safetensors"
_TOOLS = (
    "zsad",
    "torch",
    "open_clip_torch",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "onnxruntime-gpu",
)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def apply_calibration(encoder: DualPathEncoder, artifact_path: Path, backbone: str) -> None:
    """Load a HeadCLIP artifact's head weights into the encoder (they are baked into the ONNX)."""
    artifact = load_artifact(artifact_path, backbone=backbone, image_size=encoder.image_size)
    if artifact.local_path != encoder.local_path:
        raise ZsadError(
            f"--calibration {artifact_path}: trained with local path "
            f"{artifact.local_path.describe()}; the encoder computes "
            f"{encoder.local_path.describe()}"
        )
    encoder.load_head_weights(artifact.head_weights, f"--calibration {artifact_path}")


def export_bundle(
    encoder: DualPathEncoder | TapEncoder,
    out: Path,
    *,
    backbone: str,
    method: str,
    calibration: Path | None = None,
    engine: str = "none",
    compute_capabilities: Sequence[str] = (),
    max_batch: int = 16,
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
    source: dict[str, Any] | None = None,
    log: Callable[[str], None] = _log,
) -> dict[str, Any]:
    """Export and check the ONNX files, write bundle.json, then build the engine if asked.

    ``encoder`` must have been built with the method's outputs (the registry's outputs); the
    bundle serves every method of its kind (a staps bundle: staps and musc). Returns the
    bundle.json content. Nothing is recorded unless the parity checks pass.
    """
    spec = get_method(method)
    if tuple(encoder.outputs) != spec.outputs:
        raise ZsadError(f"--method {method}: the encoder must output {spec.outputs}")
    if spec.needs_calibration and calibration is None:
        raise ZsadError(f"--method {method}: needs --calibration ARTIFACT (from zsad calibrate)")
    if not spec.needs_calibration and calibration is not None:
        raise ZsadError("--calibration: only --method headclip uses a calibration artifact")
    if engine not in ("none", "rtx", "trt"):
        raise ZsadError(f"--engine {engine!r}: choose none, rtx or trt")
    if engine != "none":
        import_tensorrt(engine)  # fail before the export, not after it
    out.mkdir(parents=True, exist_ok=True)
    # A half-rewritten folder must not look valid, nor keep files from an earlier export.
    for stale in (BUNDLE_JSON, ENGINE_FILE, CALIBRATION_FILE):
        (out / stale).unlink(missing_ok=True)
    if calibration is not None:
        apply_calibration(encoder, calibration, backbone)
    encoder = encoder.float().cpu().eval()
    size = encoder.image_size

    start = time.perf_counter()
    log(f"exporting {backbone} ({method}: {', '.join(encoder.outputs)}) at {size} px to ONNX")
    fp32_model = export_onnx(encoder, out / FP32_ONNX)
    log(f"  FP32 ONNX written in {time.perf_counter() - start:.1f} s")
    fp16_model = convert_to_fp16(fp32_model)
    save_model(fp16_model, out / FP16_ONNX)
    del fp32_model, fp16_model

    pixels = parity.check_batch(size, mean=tuple(mean), std=tuple(std))
    with torch.inference_mode():
        reference = {
            k: getattr(encoder(torch.from_numpy(pixels)), k).numpy() for k in encoder.outputs
        }
    fp32_out = _run_onnx(out / FP32_ONNX, pixels)
    fp16_out = _run_onnx(out / FP16_ONNX, pixels)
    checks = {
        "fp32_vs_torch": parity.compare(reference, fp32_out),
        "fp16_vs_fp32": parity.compare(fp32_out, fp16_out),
    }
    _report(checks, log)
    problems = parity.failures(checks["fp32_vs_torch"], parity.FP32_MIN_COSINE)
    problems += parity.failures(checks["fp16_vs_fp32"], parity.FP16_MIN_COSINE)
    if problems:
        raise ZsadError(f"export check failed in {out}: {'; '.join(problems)}")

    files = [FP32_ONNX, FP16_ONNX]
    calibration_meta = None
    if calibration is not None:
        shutil.copyfile(calibration, out / CALIBRATION_FILE)
        files.append(CALIBRATION_FILE)
        calibration_meta = {"file": CALIBRATION_FILE, "source": str(calibration)}

    meta = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": spec.bundle_method,
        "backbone": backbone,
        "source": source or {},
        "image_size": size,
        "patch_size": encoder.patch_size,
        "grid": encoder.grid,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "resize": "bicubic, no crop",
        "taps": list(encoder.taps),
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32"},
        "outputs": list(encoder.outputs),
        "output_shapes": {k: ["batch", *v.shape[1:]] for k, v in reference.items()},
        "opset": OPSET,
        "precision": {
            FP32_ONNX: "fp32",
            FP16_ONNX: "fp16, strongly typed; fp32 islands: " + ", ".join(sorted(FP32_ISLANDS)),
        },
        "engine": None,
        "calibration": calibration_meta,
        **({"local_path": encoder.local_path.to_meta()} if "local" in encoder.outputs else {}),
        "parity": {
            "batch": len(pixels),
            "thresholds": {
                "fp32_vs_torch": parity.FP32_MIN_COSINE,
                "fp16_vs_fp32": parity.FP16_MIN_COSINE,
            },
            **checks,
        },
        "tools": _tool_versions(),
        "files": {
            name: {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
            for name in files
        },
    }
    write_meta(out, meta)
    if engine != "none":
        meta = add_engine(
            out,
            flavour=engine,
            compute_capabilities=compute_capabilities,
            max_batch=max_batch,
            log=log,
        )
    log(f"bundle {out} ready in {time.perf_counter() - start:.1f} s")
    return meta


def _run_onnx(path: Path, pixels: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {INPUT_NAME: pixels}), strict=True))


def _report(checks: dict[str, dict[str, dict[str, float]]], log: Callable[[str], None]) -> None:
    for label, numbers in checks.items():
        parts = [
            f"{name} cos {v['cosine']:.7f} (worst token {v['min_token_cosine']:.7f}, "
            f"max |diff| {v['max_abs_diff']:.2e})"
            for name, v in numbers.items()
        ]
        log(f"  parity {label}: " + "; ".join(parts))


def _tool_versions() -> dict[str, str]:
    versions = {}
    for name in _TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def export_model(
    out: Path,
    *,
    model: str,
    weights: Path | None = None,
    pretrained: str | None = None,
    method: str = DEFAULT_METHOD,
    image_size: int = 518,
    calibration: Path | None = None,
    engine: str = "none",
    compute_capabilities: Sequence[str] = (),
    max_batch: int = 16,
    local_path: dict[str, Any] | None = None,
    log: Callable[[str], None] = _log,
) -> dict[str, Any]:
    """Load ``model`` (open_clip CLIP or DINO/DINOv2) and export it as a bundle for ``method``
    (see export_bundle); ``pretrained`` None takes the model's standard release.

    HeadCLIP's encoder computes the local path its calibration was trained with; ``local_path``
    (keys local_path, csa_layers, readout_layers; None values take the artifact's) must agree.
    """
    spec = get_method(method)
    if compute_capabilities and engine != "rtx":
        raise ZsadError("--compute-capability: only used with --engine rtx")
    dino = get_arch(model)
    if spec.needs_calibration and dino is not None:
        raise ZsadError(dino.headclip_refusal)
    trained = None
    if calibration is not None:
        artifact = load_artifact(calibration, backbone=model, image_size=image_size)
        artifact.local_path.require(f"--calibration {calibration}", **(local_path or {}))
        trained = artifact.local_path
    backbone = load_backbone(model, weights=weights, pretrained=pretrained)
    encoder = build_encoder(
        backbone, image_size=image_size, local_path=trained, outputs=spec.outputs
    )
    source: dict[str, Any] = {"model": model, "weights": str(weights) if weights else None}
    if weights is None:
        source["pretrained"] = pretrained or default_tag(model)
    return export_bundle(
        encoder,
        out,
        backbone=model,
        method=method,
        calibration=calibration,
        engine=engine,
        compute_capabilities=compute_capabilities,
        max_batch=max_batch,
        mean=encoder.mean,
        std=encoder.std,
        source=source,
        log=log,
    )
