"""`zsad calibrate` as a function: train HeadCLIP on an MVTec-layout dataset, write the artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zsad.calibration.train import CalibrationConfig, CalibrationResult, build_model, calibrate
from zsad.data.datasets import read_mvtec
from zsad.formats.artifact import save_artifact
from zsad.model.loading import load_clip


def calibrate_dataset(
    train_root: Path,
    out: Path,
    config: CalibrationConfig,
    *,
    model: str,
    weights: Path | None = None,
    pretrained: str | None = None,
    categories: list[str] | None = None,
    device: str = "auto",
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> tuple[CalibrationResult, str, Path, str]:
    """Train on the test split of TRAIN_ROOT's categories and save the artifact to ``out``;
    returns (result, artifact SHA-256, checkpoint path, device used)."""
    samples = read_mvtec(train_root, categories, split="test")
    checkpoint = checkpoint or out.with_name(out.name + ".ckpt")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    clip = load_clip(model, weights=weights, pretrained=pretrained)
    headclip = build_model(clip, model, config)
    info: dict[str, Any] = {
        "weights": "file" if weights is not None else pretrained or "openai",
        "train_root": str(train_root),
        "categories": sorted({s.category for s in samples if s.category}),
    }
    result = calibrate(
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
    return result, save_artifact(out, result.artifact), checkpoint, device


def summary_line(out: Path, digest: str, result: CalibrationResult, device: str) -> str:
    """One line on what was trained, how the loss went and how fast."""
    losses = result.epoch_losses
    trend = "no epochs run"
    if losses and result.first_loss is not None:
        # The first step's loss, not the first epoch's mean: with one epoch that mean is the last.
        trend = f"loss {result.first_loss:.4f} (first step) -> {losses[-1]:.4f} (last epoch)"
    per_step = result.seconds / result.steps if result.steps else 0.0
    resumed = ""
    if result.resumed_from is not None:
        epoch, batch = result.resumed_from
        resumed = f"resumed at epoch {epoch + 1}, step {batch}; "
    return resumed + (
        f"wrote {out} (sha256 {digest[:12]}): {result.artifact.hyperparameters['train_images']} "
        f"images, {len(losses)} epochs, {trend}, {result.steps} steps in {result.seconds:.1f} s "
        f"({per_step:.3f} s/step on {device})"
    )
