"""`zsad export`: write a deployment bundle (ONNX FP32 + FP16, optional TensorRT engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from zsad.cli.options import encoder_options, local_path_options
from zsad.formats.methods import EXPORTABLE

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


@local_path_options()
@encoder_options(only=("model", "weights", "pretrained", "image_size"))
def export(
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to write (created if needed).")],
    method: Annotated[
        Literal[EXPORTABLE],
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
    engine: Annotated[
        Literal["none", "rtx", "trt"],
        typer.Option(
            "--engine",
            help="Also build an engine: none; rtx (TensorRT-RTX, builds without a GPU, for RTX "
            "20xx-50xx); trt (full TensorRT, builds on the target GPU: Jetson, datacenter).",
        ),
    ] = "none",
    compute_capability: ComputeCapabilityOpt = None,
    max_batch: MaxBatchOpt = 16,
    *,
    encoder: Any,
    local_path: dict[str, Any],
) -> None:
    """Export the image encoder to ONNX (FP32 and FP16) and optionally a TensorRT engine.

    The bundle folder gets encoder.onnx, encoder.fp16.onnx, encoder.engine (with --engine),
    calibration.safetensors (headclip) and bundle.json. Export checks itself (ONNX checker,
    ONNX Runtime vs PyTorch, FP16 vs FP32) and fails instead of writing a bad bundle.
    A headclip encoder computes the local path its calibration was trained with.
    Run it with `zsad infer --bundle OUT` (ONNX Runtime) or
    `zsad infer --engine OUT/encoder.engine` (TensorRT).
    """
    from zsad.api.encoders import model_image_size, require_torch

    require_torch("zsad export")
    from zsad.export.engine import parse_compute_capabilities
    from zsad.export.pipeline import export_model

    export_model(
        out,
        model=encoder.model,
        weights=encoder.weights,
        pretrained=encoder.pretrained,
        method=method,
        image_size=model_image_size(encoder.model, encoder.image_size),
        calibration=calibration,
        engine=engine,
        compute_capabilities=parse_compute_capabilities(compute_capability),
        max_batch=max_batch,
        local_path=local_path,
    )
    typer.echo(f"exported {encoder.model} ({method}) -> {out}")


def build_engine(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by zsad export.")],
    engine: Annotated[
        Literal["rtx", "trt"],
        typer.Option(
            "--engine",
            help="rtx (TensorRT-RTX) or trt (full TensorRT).",
        ),
    ] = "rtx",
    compute_capability: ComputeCapabilityOpt = None,
    max_batch: MaxBatchOpt = 16,
) -> None:
    """Build (or rebuild) BUNDLE/encoder.engine from the bundle's FP16 ONNX; no torch needed.

    Use it on the target machine: full TensorRT (Jetson, datacenter GPUs) builds for the GPU it
    runs on, so export on a workstation, copy the bundle, then build the engine there.
    """
    from zsad.export.engine import add_engine, parse_compute_capabilities

    targets = parse_compute_capabilities(compute_capability)
    add_engine(bundle, flavour=engine, compute_capabilities=targets, max_batch=max_batch)
    typer.echo(f"engine -> {bundle / 'encoder.engine'}")


def register(app: typer.Typer) -> None:
    """Attach these commands to the app."""
    app.command("export")(export)
    app.command("build-engine")(build_engine)
