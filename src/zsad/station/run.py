"""Run a station from a Detector: a hot folder (`zsad watch`) or a list of paths on a stream
(`zsad infer --stream`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from zsad.api.detector import Detector
from zsad.errors import ZsadError
from zsad.station.frames import HotFolder, PathList
from zsad.station.station import Station, StationOptions

Echo = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def run_station(
    detector: Detector,
    source_factory: Callable[[set[Any]], Any],
    *,
    out: Path,
    bank: int = 32,
    threshold: float | None = None,
    overlays: bool = True,
    status_every: float = 5.0,
    move_rejected: bool = True,
    idle_exit_s: float | None = None,
    poll_s: float = 0.2,
    echo: Echo = _stderr,
) -> dict[str, Any]:
    """Score frames from ``source_factory(done)`` one by one into OUT until stopped; returns the
    final status. OUT is resumed: nothing in its journal is scored again."""
    stream = detector.stream(bank, threshold=threshold)
    for note in detector.notes:
        echo(f"zsad: {note}")
    options = StationOptions(
        out=out,
        threshold=stream.threshold,
        overlays=overlays,
        status_interval_s=status_every,
        poll_s=poll_s,
        idle_exit_s=idle_exit_s,
        move_rejected=move_rejected,
        echo=echo,
    )
    return Station(detector.backend, stream.scorer, source_factory, options).run()


def watch_folder(
    detector: Detector,
    in_dir: Path,
    out: Path,
    *,
    retry_s: float = 2.0,
    **station: Any,
) -> dict[str, Any]:
    """Inspect images as they arrive in ``in_dir`` (see ``run_station`` for the options)."""
    if not in_dir.is_dir():
        raise ZsadError(f"{in_dir}: not a folder")
    return run_station(
        detector,
        lambda done: HotFolder(in_dir, done, retry_s=retry_s, exclude=out),
        out=out,
        move_rejected=True,
        **station,
    )


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
    return run_station(
        detector,
        lambda done: PathList(lines, done, retry_s=retry_s),
        out=out,
        move_rejected=False,
        **station,
    )
