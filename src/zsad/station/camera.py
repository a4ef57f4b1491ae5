"""A camera as a station's source: every frame durable under OUT/frames before it is scored.

A frame from the camera is written to ``frames/pending`` (``FrameStore``) and only then offered
to the station, so a kill between acquisition and record loses nothing: on restart, pending
frames the journal does not list are scored again, and those it lists (the kill came after the
record) are filed as their record says. Triggers from the line reach the camera through
``trigger``; a camera that is not there at start or goes away later is reopened with backoff,
said once when lost and once when back, and shown in the status as ``camera-unreachable``. A
wrong URI, a missing producer or a setting the camera refuses stops the station instead: no
wait mends those. A trigger taken but not answered (the camera went away, no frame came within
``trigger_timeout_s``, or the station stopped first) comes out as ``Unanswered``, which the
station journals as a rejected record with the trigger's part id: the PLC matching results to
parts never waits for one that will not come.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from zsad.data.cameras.source import (
    CameraFrame,
    CameraSettingError,
    GrabbingSource,
    parse_trigger,
)
from zsad.data.cameras.store import FrameStore, frame_name, read_part_id
from zsad.data.cameras.uri import check_uri, open_source
from zsad.data.images import ImageLoadError, as_rgb_array
from zsad.errors import ZsadError, echo_stderr
from zsad.formats.urls import read_secret, split_url
from zsad.station.frames import FileVersion, Frame, FrameKey, Rejection, Unanswered
from zsad.station.journal import read_journal
from zsad.station.line.hub import TriggerRefused
from zsad.station.status import iso_time

PASSWORD_ENV = "ZSAD_CAMERA_PASSWORD"
# A camera that went away is reopened after 0.5 s, 1 s, 2 s ... at most this often.
REOPEN_FIRST_S = 0.5
REOPEN_MAX_S = 10.0
RESULTS = "results.jsonl"


@dataclass(frozen=True)
class CameraConfig:
    """A camera source of a station: its URI, settings, trigger and which frames it keeps."""

    source: str  # genicam://PRODUCER.cti[?serial=S|index=N] or rtsp://HOST[:PORT]/PATH
    settings: dict[str, str] = field(default_factory=dict)  # GenICam features, written in order
    trigger: str = "free"  # free, software, hardware[:LINE]
    keep: str = "ng"  # which scored frames stay under OUT/frames: ng, all, none
    budget_bytes: int | None = None  # kept frames never take more (oldest OK frames go first)
    username: str | None = None  # RTSP
    password_file: Path | None = None  # RTSP; default $ZSAD_CAMERA_PASSWORD
    trigger_timeout_s: float = 5.0  # a software trigger no frame answered by then is given up

    def check(self) -> None:
        """One-line ZsadError for a wrong URI (credentials in it, an unknown scheme, a missing
        producer) or trigger; nothing is opened."""
        split_url(
            self.source,
            "--source",
            "give the user with --camera-user and the password with --camera-password-file or "
            f"${PASSWORD_ENV}",
        )
        parse_trigger(self.trigger)
        check_uri(self.source)
        if not self.trigger_timeout_s > 0:
            raise ZsadError(f"trigger timeout {self.trigger_timeout_s}: must be above 0 seconds")

    def open_source(self) -> GrabbingSource:
        """The camera (not yet opened), credentials added to an RTSP URL here, not before."""
        self.check()
        return open_source(self._url(), self.settings or None, self.trigger)

    def _url(self) -> str:
        parts = urlsplit(self.source)
        if self.username is None or not parts.scheme.startswith("rtsp"):
            return self.source
        password = read_secret(PASSWORD_ENV, self.password_file, "camera password")
        user = self.username if password is None else f"{self.username}:{password}"
        return urlunsplit(parts._replace(netloc=f"{user}@{parts.netloc}"))


class CameraFeed:
    """Frames of one camera for a Station (``next``), kept under OUT/frames by the policy."""

    blocking = False  # a signal never interrupts next(): it returns within poll_s
    waits = True  # next() waits for a frame itself (up to ``poll_s``): the station need not
    exhausted = False  # a camera never runs out

    def __init__(
        self,
        config: CameraConfig,
        out: Path,
        *,
        poll_s: float = 0.2,
        echo: Callable[[str], None] = echo_stderr,
        open_camera: Callable[[], GrabbingSource] | None = None,
    ) -> None:
        config.check()
        self.config = config
        self.out = out
        self.poll_s = poll_s
        self.echo = echo
        self._open_camera = open_camera or config.open_source
        self.store = FrameStore(out, config.keep, config.budget_bytes)
        self.camera: GrabbingSource | None = None
        self.down_since: float | None = None  # time.time() the camera went away
        self.down_error: str | None = None
        self.outages = 0
        self.triggers = 0  # accepted this run
        self._reopen_at = 0.0
        self._delay = REOPEN_FIRST_S
        self._again: deque[Path] = deque()  # pending frames of an earlier run, to score
        self._unanswered: deque[Unanswered] = deque()  # triggers given up, to journal
        self._notices: list[str] = []
        self._stopping = False  # set once the station stops: triggers are refused from then on
        self._lock = threading.Lock()  # the camera, as the sinks' threads trigger it

    # ------------------------------------------------------------------ station side

    def start(self, done: set[FrameKey]) -> CameraFeed:
        """Finish what a kill left pending, then open the camera: a wrong URI, producer or
        setting stops the station; a camera that is not there yet is waited for."""
        filed = {}
        for relative in self.store.pending():
            path = self.out / relative
            stat = path.stat()
            if (path.name, stat.st_size, stat.st_mtime_ns) in done:
                filed[path.name] = relative
            else:
                self._again.append(path)
        if filed:
            self._file_journalled(filed)
        if self._again:
            self.echo(f"zsad: {len(self._again)} frame(s) written before a restart are scored now")
        camera = self._open_camera()
        try:
            camera.open()
        except CameraSettingError:
            raise
        except Exception as exc:  # off, unplugged, not on the network yet: reopened with backoff
            self._went_away(exc)
        else:
            self.camera = camera
        return self

    @property
    def backlog(self) -> int:
        """Frames on disk not yet offered."""
        return len(self._again)

    def next(self) -> Frame | Rejection | Unanswered | None:
        """The next frame (written to OUT/frames/pending) or trigger given up; None when
        neither came within poll_s."""
        if self._again:
            return self._load(self._again.popleft())
        if self._unanswered:
            return self._unanswered.popleft()
        camera = self._camera()
        if camera is None:
            return None
        try:
            frame = camera.read(self.poll_s)
        except Exception as exc:  # the grabbing thread's error: the camera went away
            self._lost(camera, exc)
            return None
        timeout = self.config.trigger_timeout_s
        for part_id in camera.hub.overdue(timeout):
            self._unanswered.append(
                Unanswered(part_id, f"no frame came within {timeout:g} s of the trigger")
            )
        return None if frame is None else self._keep(frame)

    def notices(self) -> list[str]:
        """Lines to say once (the camera lost, back); each is returned once."""
        lines, self._notices = self._notices, []
        return lines

    def link(self, frame: FileVersion, decision: str | None) -> str | None:
        """Where the policy keeps a scored frame (relative to OUT): the record's ``frame``."""
        return self.store.destination(self._relative(frame), decision == "NG")

    def file(self, frame: FileVersion, link: str | None) -> None:
        """Once its record is journalled, move the frame to ``link`` or remove it."""
        self.store.file_as(self._relative(frame), link)

    def describe(self) -> dict[str, Any]:
        """The camera's part of status.json."""
        camera = self.camera
        return {
            "camera": "ok" if self.down_since is None else "unreachable",
            "camera_source": self.config.source,
            "camera_down_since": iso_time(self.down_since),
            "camera_error": self.down_error,
            "camera_outages": self.outages,
            "trigger": self.config.trigger,
            "triggers": self.triggers,
            "frames_dropped": 0 if camera is None else camera.dropped,
            "frames_kept_bytes": self.store.used_bytes,
        }

    def stop_triggers(self) -> list[Unanswered]:
        """Take no more triggers and give up those not answered yet (the station stops): each
        with its part id, for the journal, so the PLC waits for no result that will not come."""
        with self._lock:
            self._stopping = True
            camera = self.camera
            waiting, unread = camera.hub.stop() if camera is not None else ([], [])
        given_up = list(self._unanswered)
        self._unanswered.clear()
        given_up += [Unanswered(part_id, "station stopped before a frame") for part_id in waiting]
        given_up += [
            Unanswered(part_id, "station stopped before its frame was scored") for part_id in unread
        ]
        return given_up

    def close(self) -> None:
        """Release the camera."""
        with self._lock:
            camera, self.camera = self.camera, None
        if camera is not None:
            camera.close()

    # ------------------------------------------------------------------ line side

    def trigger(self, part_id: str | None) -> None:
        """Ask the camera for one frame carrying ``part_id`` (from any thread)."""
        mode = self.config.trigger
        if mode != "software":
            raise TriggerRefused(
                f"the camera runs with --trigger {mode}; triggers from the line need --trigger "
                "software"
            )
        with self._lock:
            if self._stopping:
                raise TriggerRefused(
                    "the station is stopping; the trigger was not taken", busy=True
                )
            if self.camera is None or self.down_since is not None:
                raise TriggerRefused(
                    f"camera unreachable since {iso_time(self.down_since)} ({self.down_error}); "
                    "the trigger was not taken",
                    busy=True,
                )
            self.camera.trigger(part_id)
            self.triggers += 1

    # ------------------------------------------------------------------ frames

    def _keep(self, frame: CameraFrame) -> Frame:
        arrived = time.monotonic() - max(0.0, time.time() - frame.timestamp)
        relative = self.store.write(frame.image, frame_name(frame), frame.part_id)
        path = self.out / relative
        stat = path.stat()
        return Frame(
            path,
            path.name,
            stat.st_size,
            stat.st_mtime_ns,
            frame.image,
            arrived,
            0.0,
            frame.part_id,
        )

    def _load(self, path: Path) -> Frame | Rejection:
        stat = path.stat()
        start = time.perf_counter()
        try:
            image = as_rgb_array(path)
            part_id = read_part_id(path)
        except (ImageLoadError, OSError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            return Rejection(path, path.name, stat.st_size, stat.st_mtime_ns, reason)
        decode_s = time.perf_counter() - start
        return Frame(
            path,
            path.name,
            stat.st_size,
            stat.st_mtime_ns,
            image,
            time.monotonic(),
            decode_s,
            part_id,
        )

    def _file_journalled(self, pending: dict[str, str]) -> None:
        """File pending frames whose record a kill left journalled, as the record links them."""
        for record in read_journal(self.out / RESULTS):
            relative = pending.pop(str(record["name"]), None)
            if relative is not None:
                self.store.file_as(relative, record.get("frame"))

    def _relative(self, frame: FileVersion) -> str:
        return Path(frame.path).relative_to(self.out).as_posix()

    # ------------------------------------------------------------------ faults

    def _camera(self) -> GrabbingSource | None:
        """The open camera, or None while it is away (reopened here with backoff)."""
        if self.down_since is None:
            return self.camera
        wait = self._reopen_at - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, self.poll_s))
            return None
        try:
            camera = self._open_camera()
            camera.open()
        except Exception as exc:  # still away
            self.down_error = _one_line(exc)
            self._reopen_at = time.monotonic() + self._delay
            self._delay = min(2 * self._delay, REOPEN_MAX_S)
            return None
        away = time.time() - self.down_since
        with self._lock:
            self.camera = camera
            self.down_since = self.down_error = None
        self._delay = REOPEN_FIRST_S
        self._notices.append(f"camera {self.config.source} is back (away {away:.0f} s)")
        return camera

    def _lost(self, camera: GrabbingSource, exc: BaseException) -> None:
        with self._lock:
            self._went_away(exc)
            # Under the lock: a trigger taken before the camera was marked away is given up here.
            given_up = camera.hub.abandon()
        reason = f"the camera went away before a frame answered the trigger ({self.down_error})"
        self._unanswered.extend(Unanswered(part_id, reason) for part_id in given_up)
        try:
            camera.close()
        except Exception as close_error:  # a camera gone may fail to release; it is gone
            self._notices.append(f"camera {self.config.source}: release failed: {close_error}")

    def _went_away(self, exc: BaseException) -> None:
        """Mark the camera away (at start or mid-run), say so once, and schedule the reopen."""
        self.down_since, self.down_error = time.time(), _one_line(exc)
        self.camera = None
        self.outages += 1
        self._reopen_at = time.monotonic() + self._delay
        self._notices.append(
            f"camera unreachable, reopening it (every {REOPEN_FIRST_S:g} s, up to "
            f"{REOPEN_MAX_S:g} s): {self.down_error}"
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
