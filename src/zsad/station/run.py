"""Run a station from a Detector: a hot folder or a camera (`zsad watch`), or a list of paths on
a stream (`zsad infer --stream`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from zsad.api.detector import Detector
from zsad.data.datasets import same_folder
from zsad.errors import ServiceUnavailable, ZsadError, echo_stderr
from zsad.formats.atomic import write_json
from zsad.formats.methods import DEFAULT_BANK
from zsad.runtime.preprocess import decode_side
from zsad.station.camera import CameraConfig, CameraFeed
from zsad.station.frames import HotFolder, PathList
from zsad.station.line.hub import Sink
from zsad.station.station import RETRY_FIRST_S, RETRY_MAX_S, Station, StationOptions
from zsad.station.status import STATUS

Echo = Callable[[str], None]


def run_station(
    detector: Detector,
    source_factory: Callable[[set[Any]], Any],
    *,
    out: Path,
    bank: int = DEFAULT_BANK,
    threshold: float | None = None,
    overlays: bool = True,
    status_every: float = 5.0,
    move_rejected: bool = True,
    idle_exit_s: float | None = None,
    poll_s: float = 0.2,
    echo: Echo = echo_stderr,
    sinks: list[Sink] | None = None,
) -> dict[str, Any]:
    """Score frames from ``source_factory(done)`` one by one into OUT until stopped; returns the
    final status. OUT is resumed: nothing in its journal is scored again. ``sinks`` (e.g.
    ``build_sinks(LineConfig(...))``) are fed from the journal while the station runs."""
    stream = detector.stream(bank, threshold=threshold)
    for note in detector.notes:
        echo(f"zsad: {note}")
    options = StationOptions(
        out=out,
        overlays=overlays,
        status_interval_s=status_every,
        poll_s=poll_s,
        idle_exit_s=idle_exit_s,
        move_rejected=move_rejected,
        echo=echo,
        sinks=list(sinks or []),
    )
    return Station(stream, source_factory, options).run()


def open_when_available(
    open_detector: Callable[[], Detector], out: Path, *, echo: Echo = echo_stderr
) -> Detector:
    """Open the detector; while its encoder server is unreachable, retry with backoff and say
    so in OUT/status.json (a station must come up before, or without, its server)."""
    delay, since = RETRY_FIRST_S, None
    while True:
        try:
            detector = open_detector()
        except ServiceUnavailable as exc:
            if since is None:
                since = time.time()
                echo(f"zsad: encoder unreachable at start, retrying: {exc}")
            write_json(
                out / STATUS,
                {
                    "state": "waiting-for-encoder",
                    "pid": os.getpid(),
                    "encoder": "unreachable",
                    "encoder_down_since": time.strftime(
                        "%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(since)
                    ),
                    "encoder_error": str(exc),
                },
            )
            time.sleep(delay)
            delay = min(2 * delay, RETRY_MAX_S)
            continue
        if since is not None:
            echo(f"zsad: encoder reachable after {time.time() - since:.0f} s")
        return detector


def check_watch_folders(in_dir: Path, out: Path) -> None:
    """Refuse a hot folder that is not a folder or is OUT itself; call before writing anything."""
    # OUT inside the hot folder is fine (the scan skips it); OUT as the hot folder is not: the
    # journal, status and state files would sit among the frames and be rejected as bad ones.
    if not in_dir.is_dir():
        raise ZsadError(f"{in_dir}: not a folder")
    if same_folder(in_dir, out):
        raise ZsadError(
            f"--out {out}: is the hot folder itself, so the station would score its own maps "
            f"and overlays; give another folder (a subfolder such as {in_dir / 'results'} is "
            "skipped by the scan)"
        )


def watch_folder(
    detector: Detector,
    in_dir: Path,
    out: Path,
    *,
    retry_s: float = 2.0,
    **station: Any,
) -> dict[str, Any]:
    """Inspect images as they arrive in ``in_dir`` (see ``run_station`` for the options)."""
    check_watch_folders(in_dir, out)
    side = decode_side(detector.image_size)
    return run_station(
        detector,
        lambda done: HotFolder(in_dir, done, retry_s=retry_s, exclude=out, max_side=side),
        out=out,
        move_rejected=True,
        **station,
    )


def watch_camera(
    detector: Detector,
    camera: CameraConfig,
    out: Path,
    *,
    poll_s: float = 0.2,
    echo: Echo = echo_stderr,
    **station: Any,
) -> dict[str, Any]:
    """Inspect frames from ``camera`` (a CameraConfig: URI, settings, trigger, frames kept) as
    they come, each written under OUT/frames before it is scored (see ``run_station``)."""
    feed = CameraFeed(camera, out, poll_s=poll_s, echo=echo)
    try:
        return run_station(
            detector, feed.start, out=out, poll_s=poll_s, echo=echo, move_rejected=True, **station
        )
    finally:
        feed.close()


def stream_paths(
    detector: Detector,
    lines: IO[str],
    out: Path,
    *,
    retry_s: float = 2.0,
    **station: Any,
) -> dict[str, Any]:
    """Score the image paths read from ``lines``, one per line, like a station (files that never
    decode are copied to OUT/rejected, not moved)."""
    side = decode_side(detector.image_size)
    return run_station(
        detector,
        lambda done: PathList(lines, done, retry_s=retry_s, max_side=side),
        out=out,
        move_rejected=False,
        **station,
    )
