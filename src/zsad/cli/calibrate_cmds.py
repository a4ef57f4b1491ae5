"""`zsad calibrate`: train HeadCLIP's prompts and head weights once, on an auxiliary dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from zsad.api.encoders import model_image_size, require_torch
from zsad.cli.options import (
    ProgressOpt,
    SeedOpt,
    encoder_options,
    local_path_options,
    option_group,
    option_parameter,
)
from zsad.scoring.headclip import JAS_RATIO, TOP_K_PERCENT

# zsad.calibration (torch) is imported inside the command, after require_torch's one-line check.

_PANEL = "Training"
_TRAINING = {
    "epochs": (Annotated[int, typer.Option("--epochs", min=0, help="Passes over the data.")], 15),
    "lr": (
        Annotated[float, typer.Option("--lr", min=0.0, help="Adam learning rate.")],
        1e-3,
    ),
    "batch_size": (
        Annotated[int, typer.Option("--batch-size", min=1, help="Images per training step.")],
        8,
    ),
    "lhw": (
        Annotated[
            bool,
            typer.Option(
                "--lhw/--no-lhw", help="Learn the head weights (--no-lhw: keep them at 1)."
            ),
        ],
        True,
    ),
    "jas": (
        Annotated[
            bool,
            typer.Option(
                "--jas/--no-jas",
                help="Store the joint anomaly score as the image-score default (--no-jas: r = 1, "
                "CLS path only).",
            ),
        ],
        True,
    ),
    "jas_ratio": (
        Annotated[
            float,
            typer.Option(
                "--jas-ratio", min=0.0, max=1.0, help="JAS weight r of the global (CLS) score."
            ),
        ],
        JAS_RATIO,
    ),
    "top_k": (
        Annotated[
            float,
            typer.Option(
                "--top-k",
                min=0.0,
                max=100.0,
                help="JAS: mean of the top k percent of map pixels.",
            ),
        ],
        TOP_K_PERCENT,
    ),
}


CheckpointOpt = Annotated[
    Path | None,
    typer.Option("--checkpoint", help="Checkpoint file (default: OUT with .ckpt appended)."),
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue from the checkpoint of an earlier run.")
]


def _training_options() -> Any:
    parameters = [option_parameter(f"tr_{name}", *spec) for name, spec in _TRAINING.items()]

    def build(values: dict[str, Any]) -> dict[str, Any]:
        chosen = {name: values[f"tr_{name}"] for name in _TRAINING}
        ratio = chosen.pop("jas_ratio")
        chosen["jas_r"] = ratio if chosen.pop("jas") else 1.0
        return chosen

    return option_group("training", parameters, build)


@_training_options()
@local_path_options()
@encoder_options(only=("model", "weights", "pretrained", "image_size", "device"))
def calibrate(
    train_root: Annotated[
        Path, typer.Argument(help="Auxiliary dataset root (MVTec layout, with masks).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Artifact to write (.safetensors).")] = Path(
        "headclip.safetensors"
    ),
    dataset: Annotated[
        Literal["mvtec"], typer.Option("--dataset", help="Dataset layout.")
    ] = "mvtec",
    categories: Annotated[
        str | None,
        typer.Option("--categories", help="Comma-separated training categories (default: all)."),
    ] = None,
    checkpoint: CheckpointOpt = None,
    resume: ResumeOpt = False,
    seed: SeedOpt = 0,
    progress: ProgressOpt = True,
    *,
    encoder: Any,
    local_path: dict[str, Any],
    training: dict[str, Any],
) -> None:
    """Train HeadCLIP (prompts, deep text tokens, head weights) and write the artifact.

    Uses the test split (good and defective images, with masks) of every category of
    TRAIN_ROOT, as HeadCLIP and AnomalyCLIP train on MVTec AD and test elsewhere. CLIP stays
    frozen. OUT holds the two final text embeddings and the head weights that `zsad infer
    --method headclip --calibration OUT` needs; a checkpoint (OUT.ckpt) is written every 50
    steps and after every epoch, and `--resume` continues an interrupted run from it.
    """
    require_torch("zsad calibrate")
    from zsad.calibration.run import calibrate_dataset, summary_line
    from zsad.calibration.train import CalibrationConfig

    size = model_image_size(encoder.model, encoder.image_size)
    chosen = {k: v for k, v in local_path.items() if v is not None}
    config = CalibrationConfig(image_size=size, seed=seed, **training, **chosen)
    ckpt = checkpoint or out.with_name(out.name + ".ckpt")
    try:
        result, digest, ckpt, device = calibrate_dataset(
            train_root,
            out,
            config,
            model=encoder.model,
            weights=encoder.weights,
            pretrained=encoder.pretrained,
            categories=categories.split(",") if categories else None,
            device=encoder.device,
            checkpoint=ckpt,
            resume=resume,
            progress=progress,
        )
    except KeyboardInterrupt:
        if ckpt.is_file():
            typer.echo(f"zsad: last checkpoint {ckpt}; add --resume to continue", err=True)
        raise
    typer.echo(summary_line(out, digest, result, device))


def register(app: typer.Typer) -> None:
    """Attach this command to the app."""
    app.command("calibrate")(calibrate)
