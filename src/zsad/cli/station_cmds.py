"""Station commands: `zsad watch` (a hot folder or a camera) and `zsad calibrate-threshold`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from zsad.cli.detect_cmds import detector, echo_err
from zsad.cli.options import (
    STATION_PANEL,
    STREAM_EXCLUDED,
    BankOpt,
    FileColumnOpt,
    HeadclipFlags,
    LabelColumnOpt,
    OverlaysOpt,
    SeedOpt,
    StreamMethodOpt,
    ThresholdOpt,
    camera_options,
    encoder_options,
    headclip_options,
    line_options,
    scoring_options,
)
from zsad.data.datasets import read_folder, read_labelled_folder
from zsad.errors import ZsadError
from zsad.formats.atomic import writable_folder
from zsad.formats.methods import DEFAULT_BANK

# The commands import what they run inside their functions: `zsad --help` starts without the
# station, its line sinks or the threshold search.

stream_scoring_options = scoring_options(exclude=STREAM_EXCLUDED)

RetryOpt = Annotated[
    float,
    typer.Option(
        "--retry-s",
        min=0.0,
        help="Keep retrying an unreadable file until it has been unchanged this long, then "
        "reject it (a file still being written keeps changing).",
        rich_help_panel=STATION_PANEL,
    ),
]
StatusOpt = Annotated[
    float,
    typer.Option(
        "--status-every",
        min=0.1,
        help="Seconds between status lines on stderr and rewrites of OUT/status.json.",
        rich_help_panel=STATION_PANEL,
    ),
]
PollOpt = Annotated[
    float, typer.Option("--poll-s", min=0.01, help="Seconds between folder scans when idle.")
]
IdleOpt = Annotated[
    float | None,
    typer.Option(
        "--exit-when-idle",
        min=0.0,
        help="Stop after this many seconds with nothing to do (default: run until SIGINT/SIGTERM).",
        rich_help_panel=STATION_PANEL,
    ),
]


FalseAlarmOpt = Annotated[
    float,
    typer.Option(
        "--false-alarm-rate",
        min=0.0,
        max=0.999,
        help="Share of good images allowed to be called NG.",
    ),
]
LabelsOpt = Annotated[
    Path | None,
    typer.Option(
        "--labels",
        help="CSV of a labelled validation set in the IMAGES folder (a header row, then e.g. "
        "id,label or filename,label; see --file-column/--label-column): the threshold "
        "maximises F1 instead. Scored in row order.",
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print the threshold; do not write the bundle.")
]


@camera_options()
@line_options()
@stream_scoring_options
@headclip_options()
@encoder_options()
def watch(
    in_dir: Annotated[
        Path | None,
        typer.Argument(help="Hot folder the camera or PLC writes images to (or give --source)."),
    ] = None,
    *,
    out: Annotated[Path, typer.Option("--out", help="Results folder (resumed if it exists).")],
    method: StreamMethodOpt = None,
    bank: BankOpt = DEFAULT_BANK,
    threshold: ThresholdOpt = None,
    retry_s: RetryOpt = 2.0,
    poll_s: PollOpt = 0.2,
    exit_when_idle: IdleOpt = None,
    status_every: StatusOpt = 5.0,
    overlays: OverlaysOpt = True,
    seed: SeedOpt = 0,
    encoder: Any,
    headclip: HeadclipFlags,
    scoring: Any,
    line: Any,
    source: Any,
) -> None:
    """Inspect images as they arrive in a hot folder or from a camera, in order, until stopped.

    Writes one line per image to OUT/results.jsonl (arrival index, score, OK/NG, map, overlay,
    timings), appended and fsync'd one at a time, with maps in OUT/maps and overlays in
    OUT/overlays. Restarting with the same OUT resumes: nothing is scored twice or skipped.
    --mqtt, --opcua and --http connect the station to the line (docs/line.md); each is fed
    from the journal, so a sink that is down loses nothing.
    Files that never decode go to OUT/rejected/ with a .reason.txt. OUT/status.json shows
    throughput, backlog and memory. SIGINT/SIGTERM finish the current image and exit 0.
    Writers should write to a dot-file or *.tmp and rename; such names are ignored, and so
    are files not named like images (notes.txt, Thumbs.db). OUT may sit inside the hot folder
    (it is not scanned) but may not be the hot folder itself.
    --source genicam://..., aravis://... or rtsp://... reads a camera instead, frames kept in
    OUT/frames.
    """
    from zsad.station.line.sinks import build_sinks
    from zsad.station.run import open_when_available, watch_camera, watch_folder

    chosen = _watched(in_dir, source, out)
    with writable_folder(out):
        opened = open_when_available(
            lambda: detector(encoder, method, headclip, scoring), out, echo=echo_err
        )
        station = {
            "bank": bank,
            "threshold": threshold,
            "overlays": overlays,
            "status_every": status_every,
            "idle_exit_s": exit_when_idle,
            "poll_s": poll_s,
            "echo": echo_err,
            "sinks": build_sinks(line),
        }
        with opened as det:
            if isinstance(chosen, Path):
                watch_folder(det, chosen, out, retry_s=retry_s, **station)
            else:
                watch_camera(det, chosen, out, **station)


def _watched(in_dir: Path | None, source: Any, out: Path) -> Any:
    """The hot folder (checked against OUT) or the CameraConfig `zsad watch` is to read."""
    from zsad.station.run import check_watch_folders

    if in_dir is not None and source is not None:
        raise ZsadError(f"{in_dir}: give the hot folder as IN_DIR or --source, not both")
    if in_dir is None and source is None:
        raise ZsadError(
            "watch: give a hot folder (IN_DIR) or --source genicam://..., aravis://... or "
            "rtsp://..."
        )
    chosen = in_dir or source
    if isinstance(chosen, Path):
        check_watch_folders(chosen, out)
    return chosen


@stream_scoring_options
@headclip_options(calibration=False)
@encoder_options(only=("bundle", "backend", "precision", "engine", "device"))
def calibrate_threshold(
    images: Annotated[
        list[str],
        typer.Argument(
            help="Good images (folders, globs, files, .txt lists), scored in the order given "
            "(folders by name); with --labels, one folder."
        ),
    ],
    method: StreamMethodOpt = None,
    false_alarm_rate: FalseAlarmOpt = 0.01,
    labels: LabelsOpt = None,
    file_column: FileColumnOpt = None,
    label_column: LabelColumnOpt = None,
    bank: BankOpt = DEFAULT_BANK,
    dry_run: DryRunOpt = False,
    seed: SeedOpt = 0,
    *,
    encoder: Any,
    headclip: HeadclipFlags,
    scoring: Any,
) -> None:
    """Set the OK/NG threshold of a bundle from good images (or a labelled set, by F1-max).

    The images are scored exactly as `zsad watch` scores a stream (MuSc/STAPS: warm-up on the
    first --bank images, then the rolling bank), and the threshold is stored in
    BUNDLE/bundle.json under the method, with the settings it holds for. Prints JSON.
    """
    from zsad.evaluation.thresholds import calibrate_threshold as calibrate

    if not encoder.deployed:
        raise ZsadError("calibrate-threshold: needs --bundle DIR (the threshold is stored there)")
    if labels is not None and len(images) != 1:
        raise ZsadError("--labels: give the one folder the CSV names files in")
    if labels is None and (file_column or label_column):
        raise ZsadError("--file-column/--label-column: only with --labels CSV")
    samples = (
        read_folder(images)
        if labels is None
        else read_labelled_folder(
            images[0], labels, file_column=file_column, label_column=label_column
        )
    )
    with detector(encoder, method, headclip, scoring) as det:
        entry = calibrate(
            det,
            samples,
            bank=bank,
            false_alarm_rate=false_alarm_rate,
            labelled=labels is not None,
            store=not dry_run,
            echo=echo_err,
        )
    typer.echo(json.dumps(entry))


def register(app: typer.Typer) -> None:
    """Attach these commands to the app."""
    app.command("watch")(watch)
    app.command("calibrate-threshold")(calibrate_threshold)
