"""`zsad calibrate`: train HeadCLIP's prompts and head weights once, on an auxiliary dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsad.cli.common import (
    DeviceOpt,
    ImageSizeOpt,
    ModelOpt,
    PretrainedOpt,
    ProgressOpt,
    SeedOpt,
    WeightsOpt,
    require_torch,
)
from zsad.errors import ZsadError
from zsad.scoring.headclip import JAS_RATIO, TOP_K_PERCENT


def calibrate(
    train_root: Annotated[
        Path, typer.Argument(help="Auxiliary dataset root (MVTec layout, with masks).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Artifact to write (.safetensors).")] = Path(
        "headclip.safetensors"
    ),
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset layout: mvtec.")] = "mvtec",
    categories: Annotated[
        str | None,
        typer.Option("--categories", help="Comma-separated training categories (default: all)."),
    ] = None,
    model: ModelOpt = "ViT-L-14-336",
    weights: WeightsOpt = None,
    pretrained: PretrainedOpt = "openai",
    image_size: ImageSizeOpt = 518,
    device: DeviceOpt = "auto",
    epochs: Annotated[int, typer.Option("--epochs", min=0, help="Passes over the data.")] = 15,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-3,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Images per training step.")
    ] = 8,
    lhw: Annotated[
        bool,
        typer.Option("--lhw/--no-lhw", help="Learn the head weights (--no-lhw: keep them at 1)."),
    ] = True,
    jas: Annotated[
        bool,
        typer.Option(
            "--jas/--no-jas",
            help="Store the joint anomaly score as the image-score default (--no-jas: r = 1, "
            "CLS path only).",
        ),
    ] = True,
    jas_ratio: Annotated[
        float, typer.Option("--jas-ratio", help="JAS weight r of the global (CLS) score.")
    ] = JAS_RATIO,
    top_k: Annotated[
        float, typer.Option("--top-k", help="JAS: mean of the top k percent of map pixels.")
    ] = TOP_K_PERCENT,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Checkpoint file (default: OUT with .ckpt appended)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the checkpoint of an earlier run.")
    ] = False,
    seed: SeedOpt = 0,
    progress: ProgressOpt = True,
) -> None:
    """Train HeadCLIP (prompts, deep text tokens, head weights) and write the artifact.

    Uses the test split (good and defective images, with masks) of every category of
    TRAIN_ROOT, as HeadCLIP and AnomalyCLIP train on MVTec AD and test elsewhere. CLIP stays
    frozen. OUT holds the two final text embeddings and the head weights that `zsad infer
    --method headclip --calibration OUT` needs; a checkpoint (OUT.ckpt) is written every 50
    steps and after every epoch, and `--resume` continues an interrupted run from it.
    """
    if dataset != "mvtec":
        raise ZsadError(f"--dataset {dataset!r}: supported layouts: mvtec")
    require_torch("zsad calibrate")
    import torch

    from zsad.calibration.artifact import save_artifact
    from zsad.calibration.train import CalibrationConfig, build_model
    from zsad.calibration.train import calibrate as train
    from zsad.data.datasets import read_mvtec
    from zsad.model.loading import load_clip

    config = CalibrationConfig(
        image_size=image_size,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        lhw=lhw,
        jas_r=jas_ratio if jas else 1.0,
        top_k=top_k,
    )
    names = categories.split(",") if categories else None
    samples = read_mvtec(train_root, names, split="test")
    checkpoint = checkpoint or out.with_name(out.name + ".ckpt")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    clip = load_clip(model, weights=weights, pretrained=pretrained)
    headclip = build_model(clip, model, config)
    info = {
        "weights": "file" if weights is not None else pretrained,
        "train_root": str(train_root),
        "categories": sorted({s.category for s in samples if s.category}),
    }
    try:
        result = train(
            headclip,
            samples,
            config,
            backbone=model,
            device=device,
            checkpoint=checkpoint,
            resume=resume,
            progress=progress,
            info=info,
        )
    except KeyboardInterrupt:
        if checkpoint.is_file():
            typer.echo(f"zsad: last checkpoint {checkpoint}; add --resume to continue", err=True)
        raise
    digest = save_artifact(out, result.artifact)
    losses = result.epoch_losses
    trend = f"loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "no epochs run"
    per_step = result.seconds / result.steps if result.steps else 0.0
    if result.resumed_from is not None:
        epoch, batch = result.resumed_from
        typer.echo(f"resumed from {checkpoint} at epoch {epoch + 1}, step {batch}", err=True)
    typer.echo(
        f"wrote {out} (sha256 {digest[:12]}): {result.artifact.hyperparameters['train_images']} "
        f"images, {len(losses)} epochs, {trend}, {result.steps} steps in {result.seconds:.1f} s "
        f"({per_step:.3f} s/step on {device})"
    )


def register(app: typer.Typer) -> None:
    """Attach this command to the app."""
    app.command("calibrate")(calibrate)
