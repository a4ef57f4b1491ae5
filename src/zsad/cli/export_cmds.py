"""`zsad export`: write a deployment bundle (ONNX FP32 + FP16, optional TensorRT engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsad.cli.common import ImageSizeOpt, ModelOpt, PretrainedOpt, WeightsOpt, require_torch
from zsad.errors import ZsadError

ComputeCapabilityOpt = Annotated[
    str | None,
    typer.Option(
        "--compute-capability",
        help="TensorRT-RTX targets, e.g. 7.5,8.6,8.9 (7.5 = Turing, RTX 20xx, only when "
        "listed). Default: 8.0, 8.6, 8.9, 12.0, 12.1.",
    ),
]
MaxBatchOpt = Annotated[
    int, typer.Option("--max-batch", min=1, help="Largest batch the engine accepts.")
]


def export(
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to write (created if needed).")],
    model: ModelOpt = "ViT-L-14-336",
    weights: WeightsOpt = None,
    pretrained: PretrainedOpt = "openai",
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="staps: outputs cls + taps (training-free set scoring); headclip: cls + local "
            "with the artifact's head weights baked in (needs --calibration).",
        ),
    ] = "staps",
    calibration: Annotated[
        Path | None,
        typer.Option("--calibration", help="HeadCLIP artifact (.safetensors from zsad calibrate)."),
    ] = None,
    image_size: ImageSizeOpt = 518,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="Also build an engine: none; rtx (TensorRT-RTX, builds without a GPU, for RTX "
            "20xx-50xx); trt (full TensorRT, builds on the target GPU: Jetson, datacenter).",
        ),
    ] = "none",
    compute_capability: ComputeCapabilityOpt = None,
    max_batch: MaxBatchOpt = 16,
) -> None:
    """Export the image encoder to ONNX (FP32 and FP16) and optionally a TensorRT engine.

    The bundle folder gets encoder.onnx, encoder.fp16.onnx, encoder.engine (with --engine),
    calibration.safetensors (headclip) and bundle.json. Export checks itself (ONNX checker,
    ONNX Runtime vs PyTorch, FP16 vs FP32) and fails instead of writing a bad bundle.
    Run it with `zsad infer --bundle OUT` (ONNX Runtime) or
    `zsad infer --engine OUT/encoder.engine` (TensorRT).
    """
    require_torch("zsad export")
    from zsad.export.engine import parse_compute_capabilities
    from zsad.export.pipeline import METHOD_OUTPUTS, export_bundle
    from zsad.model import DualPathEncoder, load_clip

    if method not in METHOD_OUTPUTS:
        raise ZsadError(f"--method {method!r}: choose {' or '.join(METHOD_OUTPUTS)}")
    targets = parse_compute_capabilities(compute_capability)
    if targets and engine != "rtx":
        raise ZsadError("--compute-capability: only used with --engine rtx")
    clip = load_clip(model, weights=weights, pretrained=pretrained)
    encoder = DualPathEncoder(clip, image_size=image_size, outputs=METHOD_OUTPUTS[method])
    cfg = getattr(clip.visual, "preprocess_cfg", {}) or {}
    extra = {} if "mean" not in cfg else {"mean": cfg["mean"], "std": cfg["std"]}
    source = {"model": model, "weights": str(weights) if weights else None}
    if weights is None:
        source["pretrained"] = pretrained
    export_bundle(
        encoder,
        out,
        backbone=model,
        method=method,
        calibration=calibration,
        engine=engine,
        compute_capabilities=targets,
        max_batch=max_batch,
        source=source,
        **extra,
    )
    typer.echo(f"exported {model} ({method}) -> {out}")


def build_engine(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by zsad export.")],
    engine: Annotated[
        str, typer.Option("--engine", help="rtx (TensorRT-RTX) or trt (full TensorRT).")
    ] = "rtx",
    compute_capability: ComputeCapabilityOpt = None,
    max_batch: MaxBatchOpt = 16,
) -> None:
    """Build (or rebuild) BUNDLE/encoder.engine from the bundle's FP16 ONNX; no torch needed.

    Use it on the target machine: full TensorRT (Jetson, datacenter GPUs) builds for the GPU it
    runs on, so export on a workstation, copy the bundle, then build the engine there.
    """
    from zsad.export.engine import add_engine, parse_compute_capabilities

    if engine not in ("rtx", "trt"):
        raise ZsadError(f"--engine {engine!r}: choose rtx or trt")
    targets = parse_compute_capabilities(compute_capability)
    add_engine(bundle, flavour=engine, compute_capabilities=targets, max_batch=max_batch)
    typer.echo(f"engine -> {bundle / 'encoder.engine'}")


def register(app: typer.Typer) -> None:
    """Attach these commands to the app."""
    app.command("export")(export)
    app.command("build-engine")(build_engine)
