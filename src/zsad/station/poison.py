"""Frames that kill the station: ``in-progress.json`` names the frame in hand and its step, so a
restart can tell a frame that keeps killing the process from a kill that came from outside.

The marker is written just before a frame's decode and removed once its record is written (or
on a clean stop). A restart that finds it counts a death on that frame only if the step was the
frame's own decode, encode or scoring: a kill from an operator or a service manager usually
lands elsewhere, and a death at start-up, during the bank refill or while records are written
is not the frame's doing. A frame that was in its own work at ``POISON_DEATHS`` deaths in a row
is rejected instead of tried again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from zsad.api.results import now_iso
from zsad.formats.atomic import write_json
from zsad.station.frames import FileVersion, FrameKey

IN_PROGRESS = "in-progress.json"
POISON_DEATHS = 3  # deaths in a row in the same frame's own work before it is rejected
POISON_REASON = "the station stopped three times in a row while processing this frame"
# The steps of a frame's own work: a death in any other counts nothing against it.
OWN_STEPS = ("decode", "encode", "score")


class PoisonGuard:
    """Keeps OUT/in-progress.json and the deaths in a row of the frame a dead run held."""

    def __init__(self, out: Path, echo: Callable[[str], None]) -> None:
        self.marker = out / IN_PROGRESS
        self.echo = echo
        self._in_hand: FrameKey | None = None
        self._step: str | None = None
        self._suspect: tuple[FileVersion, int, str | None] | None = None  # a dead run's frame
        self._deaths: dict[FrameKey, int] = {}  # earlier deaths in a row in a frame's own work

    def take(self, frame: FileVersion | None, step: str = "decode") -> None:
        """Name the frame being worked on, and the step (None: nothing is in hand)."""
        if frame is None:
            self.release()
            return
        if (frame.key, step) == (self._in_hand, self._step):
            return
        write_json(
            self.marker,
            {
                "path": str(frame.path),
                "name": frame.name,
                "size": frame.size,
                "mtime_ns": frame.mtime_ns,
                "deaths": self._deaths.get(frame.key, 0),
                "step": step,
                "pid": os.getpid(),
                "since": now_iso(),
            },
        )
        self._in_hand, self._step = frame.key, step

    def release(self, *, quiet: bool = False) -> None:
        """Nothing is in hand any more (the frame is done, or the stop was a clean one)."""
        try:
            self.marker.unlink(missing_ok=True)
        except OSError:
            if not quiet:
                raise
        self._in_hand = self._step = None

    def count_death(self) -> None:
        """Count the death a dead run's marker shows, if it was in the frame's own work."""
        if not self.marker.exists():
            return
        try:
            left = json.loads(self.marker.read_text())
            frame = FileVersion(
                Path(left["path"]), str(left["name"]), int(left["size"]), int(left["mtime_ns"])
            )
            deaths, step = int(left.get("deaths", 0)), left.get("step")
        except (ValueError, KeyError, TypeError) as exc:
            self.echo(f"zsad: {self.marker}: ignored, unreadable ({exc})")
            self.marker.unlink()
            return
        if step in OWN_STEPS:
            deaths += 1
        self._suspect = (frame, deaths, step)
        # Kept, with the count and no step, until a frame is taken in hand: a death during
        # start-up then neither counts against the frame nor forgets its earlier deaths.
        write_json(self.marker, {**left, "deaths": deaths, "step": None, "pid": os.getpid()})

    def poisoned(self, done: set[FrameKey]) -> FileVersion | None:
        """The dead run's frame if it must be rejected now; otherwise says why it is tried
        again (or forgets it, when its record was written) and returns None."""
        if self._suspect is None:
            return None
        frame, deaths, step = self._suspect
        self._suspect = None
        if frame.key in done:
            self.release()  # its record was written: the run died after it, not on it
            return None
        if deaths >= POISON_DEATHS:
            return frame
        self._deaths[frame.key] = deaths
        if step not in OWN_STEPS:
            where = f"while its {step} step ran" if step else "before it was in hand"
            self.echo(
                f"zsad: the last run stopped with {frame.path} in hand but {where}; not counted "
                f"against it ({deaths} of {POISON_DEATHS} deaths so far)"
            )
            return None
        self.echo(
            f"zsad: the last run stopped while processing {frame.path} ({step}); trying it again "
            f"(it is rejected at {POISON_DEATHS} such stops in a row, {deaths} so far)"
        )
        return None
