"""`zsad eval`: metrics of a method on a labelled dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from zsad.cli.detect_cmds import detector, echo_err
from zsad.cli.options import (
    BatchOpt,
    HeadclipFlags,
    MethodOpt,
    OutOpt,
    OverlaysOpt,
    ProgressOpt,
    SeedOpt,
    encoder_options,
    headclip_options,
    scoring_options,
)


@scoring_options()
@headclip_options()
@encoder_options()
def evaluate(
    root: Annotated[Path, typer.Argument(help="Dataset root (MVTec layout: CATEGORY/test/...).")],
    dataset: Annotated[
        Literal["mvtec"],
        typer.Option("--dataset", help="Dataset layout."),
    ] = "mvtec",
    categories: Annotated[
        str | None, typer.Option("--categories", help="Comma-separated categories (default: all).")
    ] = None,
    out: OutOpt = Path("zsad-eval"),
    method: MethodOpt = "staps",
    batch_size: BatchOpt = 8,
    overlays: OverlaysOpt = False,
    seed: SeedOpt = 0,
    progress: ProgressOpt = True,
    *,
    encoder: Any,
    headclip: HeadclipFlags,
    scoring: Any,
) -> None:
    """Evaluate on a labelled dataset: per-category and mean image/pixel metrics.

    staps/musc score each category's test images as one unlabeled set (zero-shot); headclip
    scores each image on its own. Writes OUT/metrics.json, OUT/metrics.md and
    OUT/CATEGORY/results.jsonl (+ maps, overlays with --overlays).
    """
    from zsad.data.datasets import read_mvtec
    from zsad.evaluation.report import evaluate as run_eval
    from zsad.evaluation.report import markdown_table

    samples = read_mvtec(root, categories.split(",") if categories else None)
    with detector(encoder, method, headclip, scoring, progress=progress) as det:
        payload = run_eval(
            det,
            samples,
            out,
            batch_size=batch_size,
            overlays=overlays,
            progress=progress,
            echo=echo_err,
        )
    typer.echo(markdown_table(payload["categories"], payload["mean"]))


def register(app: typer.Typer) -> None:
    """Attach this command to the app."""
    app.command("eval")(evaluate)
