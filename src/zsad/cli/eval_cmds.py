"""`zsad eval`: metrics of a method on a labelled dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from zsad.cli.detect_cmds import PARTIAL_FAILURE_EXIT, detector, echo_err
from zsad.cli.options import (
    BatchOpt,
    FileColumnOpt,
    HeadclipFlags,
    LabelColumnOpt,
    MethodOpt,
    OutOpt,
    OverlaysOpt,
    ProgressOpt,
    SeedOpt,
    encoder_options,
    headclip_options,
    scoring_options,
    subset_options,
)
from zsad.formats.atomic import writable_folder

# zsad.evaluation (scikit-learn, SciPy) is imported inside the command: `zsad --help` starts
# without it.

EvalLabelsOpt = Annotated[
    Path | None,
    typer.Option(
        "--labels",
        help="With --dataset folder: CSV of image-level labels for the images in ROOT (a header "
        "row, then e.g. id,label). Pixel metrics need masks, so there are none.",
    ),
]


@subset_options()
@scoring_options()
@headclip_options()
@encoder_options()
def evaluate(
    root: Annotated[
        Path,
        typer.Argument(
            help="Dataset root (MVTec layout: CATEGORY/test/...); with --dataset folder, the "
            "image folder the --labels CSV names files in."
        ),
    ],
    dataset: Annotated[
        Literal["mvtec", "folder"],
        typer.Option("--dataset", help="Dataset layout: mvtec, or folder with --labels CSV."),
    ] = "mvtec",
    categories: Annotated[
        str | None, typer.Option("--categories", help="Comma-separated categories (default: all).")
    ] = None,
    labels: EvalLabelsOpt = None,
    file_column: FileColumnOpt = None,
    label_column: LabelColumnOpt = None,
    out: OutOpt = Path("zsad-eval"),
    method: MethodOpt = None,
    batch_size: BatchOpt = 8,
    overlays: OverlaysOpt = False,
    seed: SeedOpt = 0,
    progress: ProgressOpt = True,
    *,
    encoder: Any,
    headclip: HeadclipFlags,
    scoring: Any,
    subsets: Any,
) -> None:
    """Evaluate on a labelled dataset: per-category and mean image/pixel metrics.

    staps/musc score each category's test images as one unlabeled set (zero-shot); headclip
    scores each image on its own. --dataset folder --labels CSV evaluates one folder with
    image-level labels (image metrics only; the folder's name is the category). Writes
    OUT/metrics.json, OUT/metrics.md and OUT/CATEGORY/results.jsonl (+ maps, overlays with
    --overlays). Exit status: 0 every image scored, 3 done but some images could not be read
    (left out of the metrics, listed in metrics.json), 2 a usage error.
    """
    from zsad.evaluation.report import dataset_samples, markdown_table
    from zsad.evaluation.report import evaluate as run_eval

    with writable_folder(out):
        samples = dataset_samples(root, dataset, categories, labels, file_column, label_column)
        with detector(encoder, method, headclip, scoring, progress=progress) as det:
            payload = run_eval(
                det,
                samples,
                out,
                batch_size=batch_size,
                overlays=overlays,
                progress=progress,
                subsets=subsets,
                echo=echo_err,
            )
        typer.echo(markdown_table(payload["categories"], payload["mean"]))
        if payload["excluded"]:
            raise typer.Exit(PARTIAL_FAILURE_EXIT)


def register(app: typer.Typer) -> None:
    """Attach this command to the app."""
    app.command("eval")(evaluate)
