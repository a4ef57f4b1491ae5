"""Station mode: `zsad watch` (a hot folder), `zsad calibrate-threshold`, and the pieces
`zsad infer --stream` shares with them."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from zsad.cli.common import (
    BundleOpt,
    DeviceOpt,
    EngineOpt,
    MaybeImageSizeOpt,
    ModelOpt,
    PretrainedOpt,
    SeedOpt,
    WeightsOpt,
)
from zsad.cli.methods import (
    SET_OUTPUTS,
    CalibrationOpt,
    EncoderChoice,
    JasROpt,
    TopKOpt,
    headclip_scoring,
    open_encoder,
)
from zsad.cli.scoring_options import scoring_options
from zsad.errors import ZsadError
from zsad.runtime.backend import EncoderBackend
from zsad.scoring.pipeline import SetScoringConfig

STREAM_METHODS = ("staps", "headclip")
# A stream is scored against a rolling bank, in arrival order, with the mean of the expert maps
# (see zsad.scoring.stream); STAS is off by default there: on a stream of independent parts its
# temporal term and EMA pass a defect's score on to the next parts (README, "Station mode").
STREAM_EXCLUDED = ("order", "use_bgmps", "embed", "cluster", "dim", "n_components", "top_percent")
STREAM_DEFAULTS = {"use_stas": False}
stream_scoring_options = scoring_options(exclude=STREAM_EXCLUDED, defaults=STREAM_DEFAULTS)
_PANEL = "Station"
# Scoring settings a streamed STAPS score depends on (not where or how fast it runs).
_SCORE_SETTINGS = (
    "r_list",
    "topmin_max",
    "rscin_k",
    "use_stas",
    "window",
    "gamma",
    "alpha",
    "stas_k",
    "beta",
)

StreamMethodOpt = Annotated[
    str | None,
    typer.Option(
        "--method",
        help="staps (rolling bank) or headclip (each image on its own). Default: the bundle's "
        "method, else staps.",
    ),
]
BankOpt = Annotated[
    int,
    typer.Option(
        "--bank",
        min=2,
        help="STAPS: each image is scored against the last K images. The first K are held "
        "and scored together once the bank is full (warm-up).",
        rich_help_panel=_PANEL,
    ),
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        help="NG when the score is above this. Default: the bundle's, from `zsad "
        "calibrate-threshold`; without one, results carry scores and no decision.",
        rich_help_panel=_PANEL,
    ),
]
RetryOpt = Annotated[
    float,
    typer.Option(
        "--retry-s",
        min=0.0,
        help="Keep retrying an unreadable file until it has been unchanged this long, then "
        "reject it (a file still being written keeps changing).",
        rich_help_panel=_PANEL,
    ),
]
OverlaysOpt = Annotated[
    bool, typer.Option("--overlays/--no-overlays", help="Write heatmap overlay PNGs.")
]
StatusOpt = Annotated[
    float,
    typer.Option(
        "--status-every",
        min=0.1,
        help="Seconds between status lines on stderr and rewrites of OUT/status.json.",
        rich_help_panel=_PANEL,
    ),
]


def staps_settings(scoring: SetScoringConfig, bank: int) -> dict[str, Any]:
    """What a STAPS score depends on, in JSON types (stored with a threshold)."""
    values = asdict(scoring)
    settings = {"bank": bank, **{k: values[k] for k in _SCORE_SETTINGS}}
    return json.loads(json.dumps(settings))


def stream_method(method: str | None, encoder: EncoderChoice) -> str:
    """--method, defaulting to the bundle's method."""
    if method is None:
        if encoder.bundle is None and encoder.engine is None:
            return "staps"
        from zsad.runtime.bundle import Bundle

        path = encoder.engine.parent if encoder.engine is not None else encoder.bundle
        assert path is not None
        root = path if path.is_dir() else path.parent
        method = Bundle.load(root).method
    if method not in STREAM_METHODS:
        raise ZsadError(f"--method {method!r}: a station runs {' or '.join(STREAM_METHODS)}")
    return method


def stream_scorer(
    method: str,
    encoder: EncoderChoice,
    scoring: SetScoringConfig,
    bank: int,
    calibration: Path | None,
    jas_r: float | None,
    top_k: float | None,
) -> tuple[EncoderBackend, Any, dict[str, Any]]:
    """The backend, the stream scorer and the score-defining settings for --method."""
    from zsad.runtime.station import HeadclipScorer, StapsScorer
    from zsad.scoring.stream import RollingStaps

    if method == "headclip":
        backend, score, settings = headclip_scoring(encoder, calibration, jas_r, top_k)
        return backend, HeadclipScorer(score), settings
    if calibration is not None:
        raise ZsadError(f"--calibration {calibration}: only used with --method headclip")
    backend = open_encoder(encoder, SET_OUTPUTS)
    rolling = RollingStaps(replace(scoring, method="staps"), bank)
    return backend, StapsScorer(rolling), staps_settings(scoring, bank)


def resolve_threshold(
    backend: EncoderBackend,
    method: str,
    threshold: float | None,
    settings: dict[str, Any],
    echo: Callable[[str], None],
) -> float | None:
    """--threshold, else the bundle's threshold for this method (warning on other settings)."""
    if threshold is not None:
        return threshold
    bundle = getattr(backend, "bundle", None)
    if bundle is None:
        echo("zsad: no --threshold and no bundle threshold: results carry scores, no OK/NG")
        return None
    from zsad.calibration.thresholds import bundle_threshold, mismatched_settings

    entry = bundle_threshold(bundle, method)
    if entry is None:
        echo(
            f"zsad: {bundle.root} has no {method} threshold (zsad calibrate-threshold): "
            "results carry scores, no OK/NG"
        )
        return None
    differ = mismatched_settings(entry, settings)
    if differ:
        echo(
            f"zsad: warning: the {method} threshold in {bundle.root} was calibrated with other "
            f"settings ({', '.join(differ)}); recalibrate for reliable OK/NG"
        )
    return float(entry["score"])


def run_station(
    backend: EncoderBackend,
    scorer: Any,
    source_factory: Callable[[set[Any]], Any],
    *,
    out: Path,
    threshold: float | None,
    overlays: bool,
    status_every: float,
    move_rejected: bool,
    idle_exit_s: float | None = None,
    poll_s: float = 0.2,
) -> dict[str, Any]:
    """Run a station until it stops; returns its final status."""
    from zsad.runtime.station import Station, StationOptions

    options = StationOptions(
        out=out,
        threshold=threshold,
        overlays=overlays,
        status_interval_s=status_every,
        poll_s=poll_s,
        idle_exit_s=idle_exit_s,
        move_rejected=move_rejected,
        echo=lambda line: typer.echo(line, err=True),
    )
    return Station(backend, scorer, source_factory, options).run()


@stream_scoring_options
def watch(
    in_dir: Annotated[Path, typer.Argument(help="Hot folder the camera or PLC writes images to.")],
    out: Annotated[Path, typer.Option("--out", help="Results folder (resumed if it exists).")],
    bundle: BundleOpt = None,
    engine: EngineOpt = None,
    method: StreamMethodOpt = None,
    bank: BankOpt = 32,
    threshold: ThresholdOpt = None,
    calibration: CalibrationOpt = None,
    jas_r: JasROpt = None,
    top_k: TopKOpt = None,
    model: ModelOpt = "ViT-L-14-336",
    weights: WeightsOpt = None,
    pretrained: PretrainedOpt = "openai",
    image_size: MaybeImageSizeOpt = None,
    device: DeviceOpt = "auto",
    retry_s: RetryOpt = 2.0,
    poll_s: Annotated[
        float,
        typer.Option("--poll-s", min=0.01, help="Seconds between folder scans when idle."),
    ] = 0.2,
    exit_when_idle: Annotated[
        float | None,
        typer.Option(
            "--exit-when-idle",
            min=0.0,
            help="Stop after this many seconds with nothing to do (default: run until "
            "SIGINT/SIGTERM).",
            rich_help_panel=_PANEL,
        ),
    ] = None,
    status_every: StatusOpt = 5.0,
    overlays: OverlaysOpt = True,
    seed: SeedOpt = 0,
    *,
    scoring: SetScoringConfig,
) -> None:
    """Inspect images as they arrive in a hot folder, in arrival order, until stopped.

    Writes one line per image to OUT/results.jsonl (arrival index, score, OK/NG, map, overlay,
    timings), appended and fsync'd one at a time, with maps in OUT/maps and overlays in
    OUT/overlays. Restarting with the same OUT resumes: nothing is scored twice or skipped.
    Files that never decode go to OUT/rejected/ with a .reason.txt. OUT/status.json shows
    throughput, backlog and memory. SIGINT/SIGTERM finish the current image and exit 0.
    Writers should write to a dot-file or *.tmp and rename; such names are ignored.
    """
    if not in_dir.is_dir():
        raise ZsadError(f"{in_dir}: not a folder")
    encoder = EncoderChoice(model, weights, pretrained, image_size, device, bundle, engine)
    chosen = stream_method(method, encoder)
    backend, scorer, settings = stream_scorer(
        chosen, encoder, scoring, bank, calibration, jas_r, top_k
    )
    limit = resolve_threshold(
        backend, chosen, threshold, settings, lambda line: typer.echo(line, err=True)
    )
    from zsad.runtime.frames import HotFolder

    run_station(
        backend,
        scorer,
        lambda done: HotFolder(in_dir, done, retry_s=retry_s, exclude=out),
        out=out,
        threshold=limit,
        overlays=overlays,
        status_every=status_every,
        move_rejected=True,
        idle_exit_s=exit_when_idle,
        poll_s=poll_s,
    )


def with_stream_defaults(scoring: SetScoringConfig) -> SetScoringConfig:
    """Apply the stream defaults to options the user did not set (for `zsad infer --stream`)."""
    import click

    ctx = click.get_current_context(silent=True)
    unset = {
        name: value
        for name, value in STREAM_DEFAULTS.items()
        if ctx is None
        or ctx.get_parameter_source(f"scoring_{name}") == click.core.ParameterSource.DEFAULT
    }
    return replace(scoring, **unset)


def stream_paths(
    encoder: EncoderChoice,
    method: str | None,
    scoring: SetScoringConfig,
    *,
    bank: int,
    threshold: float | None,
    calibration: Path | None,
    jas_r: float | None,
    top_k: float | None,
    out: Path,
    overlays: bool,
    retry_s: float = 2.0,
) -> None:
    """`zsad infer --stream`: score paths read from stdin, one by one, like a station."""
    from zsad.runtime.frames import PathList

    chosen = stream_method(method, encoder)
    backend, scorer, settings = stream_scorer(
        chosen, encoder, with_stream_defaults(scoring), bank, calibration, jas_r, top_k
    )
    limit = resolve_threshold(
        backend, chosen, threshold, settings, lambda line: typer.echo(line, err=True)
    )
    run_station(
        backend,
        scorer,
        lambda done: PathList(sys.stdin, done, retry_s=retry_s),
        out=out,
        threshold=limit,
        overlays=overlays,
        status_every=5.0,
        move_rejected=False,
    )


@stream_scoring_options
def calibrate_threshold(
    images: Annotated[
        list[str],
        typer.Argument(
            help="Good images (folders, globs, files, .txt lists), scored in name order; with "
            "--labels, one folder."
        ),
    ],
    bundle: BundleOpt = None,
    engine: EngineOpt = None,
    method: StreamMethodOpt = None,
    false_alarm_rate: Annotated[
        float,
        typer.Option(
            "--false-alarm-rate",
            min=0.0,
            max=0.999,
            help="Share of good images allowed to be called NG.",
        ),
    ] = 0.01,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="CSV (filename, label 0/1) of a labelled validation set in the IMAGES folder: "
            "the threshold maximises F1 instead.",
        ),
    ] = None,
    bank: BankOpt = 32,
    jas_r: JasROpt = None,
    top_k: TopKOpt = None,
    device: DeviceOpt = "auto",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the threshold; do not write the bundle.")
    ] = False,
    seed: SeedOpt = 0,
    *,
    scoring: SetScoringConfig,
) -> None:
    """Set the OK/NG threshold of a bundle from good images (or a labelled set, by F1-max).

    The images are scored exactly as `zsad watch` scores a stream (STAPS: warm-up on the
    first --bank images, then the rolling bank), and the threshold is stored in
    BUNDLE/bundle.json under the method, with the settings it holds for. Prints JSON.
    """
    if bundle is None and engine is None:
        raise ZsadError("calibrate-threshold: needs --bundle DIR (the threshold is stored there)")
    from zsad.calibration.thresholds import (
        f1_max_threshold,
        false_alarm_threshold,
        store_threshold,
    )

    encoder = EncoderChoice("", None, "", None, device, bundle, engine)
    chosen = stream_method(method, encoder)
    backend, scorer, settings = stream_scorer(chosen, encoder, scoring, bank, None, jas_r, top_k)
    samples = _samples(images, labels)
    scores, kept = score_sequence(backend, scorer, [s.path for s in samples])
    entry: dict[str, Any] = {"method": chosen, "settings": settings, "images": len(kept)}
    try:
        if labels is None:
            value = false_alarm_threshold(scores, false_alarm_rate)
            flagged = int((scores > value).sum())
            entry.update(rule="false-alarm-rate", false_alarm_rate=false_alarm_rate)
            entry.update(good_flagged=flagged)
            if len(kept) * false_alarm_rate < 1:
                typer.echo(
                    f"zsad: warning: {len(kept)} good images cannot resolve a false-alarm rate "
                    f"of {false_alarm_rate:g}; the threshold is the highest good score",
                    err=True,
                )
        else:
            by_path = {s.path: s.label for s in samples}
            truth = [by_path[p] for p in kept]
            value, f1 = f1_max_threshold(scores, truth)
            entry.update(rule="f1-max", f1=round(f1, 4), defective=int(sum(truth)))
    except ValueError as exc:
        raise ZsadError(f"calibrate-threshold: {exc}") from exc
    entry["score"] = value
    if not dry_run:
        store_threshold(backend.bundle, entry)  # type: ignore[attr-defined]
    typer.echo(json.dumps(entry))


def _samples(images: list[str], labels: Path | None) -> list[Any]:
    from zsad.data.datasets import read_folder, read_labelled_folder

    if labels is None:
        return read_folder(images)
    if len(images) != 1:
        raise ZsadError("--labels: give the one folder the CSV names files in")
    return read_labelled_folder(images[0], labels)


def score_sequence(
    backend: EncoderBackend, scorer: Any, paths: list[Path]
) -> tuple[Any, list[Path]]:
    """Score files in order as a stream; returns (scores, the paths that were readable)."""
    import numpy as np

    from zsad.data.images import ImageLoadError, load_image
    from zsad.runtime.preprocess import preprocess_image

    kept: list[Path] = []
    scores: dict[int, float] = {}
    for path in paths:
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            typer.echo(f"zsad: skipped {exc}", err=True)
            continue
        pixels = preprocess_image(image, backend.image_size, backend.mean, backend.std)
        for result in scorer.add(backend.run(pixels[None]), len(kept)):
            scores[result.position] = result.score
        kept.append(path)
    if not kept:
        raise ZsadError(f"calibrate-threshold: none of the {len(paths)} image(s) could be read")
    try:
        for result in scorer.flush():
            scores[result.position] = result.score
    except ValueError as exc:
        raise ZsadError(f"calibrate-threshold: {exc}") from exc
    return np.array([scores[i] for i in range(len(kept))]), kept


def register(app: typer.Typer) -> None:
    """Attach these commands to the app."""
    app.command("watch")(watch)
    app.command("calibrate-threshold")(calibrate_threshold)
