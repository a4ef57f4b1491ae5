"""What every camera source gives: frames with their metadata, a trigger, open/close.

A source grabs on a thread of its own, so a camera is never left waiting on a slow reader, and
hands frames to ``read`` by the rule its trigger mode sets. A frame no waiting trigger wants is
never copied out of the camera's buffer, and only the frames ``read`` returns are converted to
RGB:

- ``free``: free run. Only the newest frame waits; one the reader did not take before the next
  arrived is dropped (counted in ``dropped``), so a reader slower than the camera always gets the
  latest picture instead of an ever older backlog.
- ``software``: each ``trigger(part_id)`` is answered by one frame carrying that part id, in the
  order the triggers came. A camera that takes a software trigger exposes on it; any other source
  keeps streaming and answers a trigger with the first frame that arrives after it (frames that
  arrive while no trigger waits are dropped; two triggers never share a frame). A trigger no
  frame answered in time is given up (``FrameHub.overdue``); a frame a software-triggered camera
  sends while no trigger waits (the late answer to one given up) is dropped.
- ``hardware`` (``hardware:LINE``, ``Line0`` by default): the camera exposes on its input line;
  every frame it sends is kept, in order.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from zsad.errors import ZsadError

TRIGGER_MODES = ("free", "software", "hardware")


class CameraSettingError(ZsadError):
    """A setting the camera refuses: a configuration error that waiting for the camera won't fix."""


@dataclass(frozen=True)
class CameraFrame:
    """One acquired frame: RGB uint8 (H, W, 3) and where and when it came from."""

    image: np.ndarray
    source: str
    number: int  # 0, 1, ... in the order this source delivered its frames
    timestamp: float  # time.time() when the frame reached this host
    part_id: str | None = None  # given with the software trigger this frame answers


class FrameSource(Protocol):
    """A camera or stream of frames; a context manager that opens and closes it."""

    name: str

    def open(self) -> None:
        """Connect and start acquiring."""

    def read(self, timeout_s: float) -> CameraFrame | None:
        """The next frame, or None when none came within ``timeout_s`` seconds."""

    def trigger(self, part_id: str | None = None) -> None:
        """Ask for one frame (software trigger mode); it will carry ``part_id``."""

    def close(self) -> None:
        """Stop acquiring and release the camera."""

    def __iter__(self) -> Iterator[CameraFrame]:
        """Frames until the source is closed."""

    def __enter__(self) -> FrameSource:
        """Open the source."""

    def __exit__(self, *exc: object) -> None:
        """Close the source."""


def parse_trigger(trigger: str) -> tuple[str, str | None]:
    """``free``, ``software``, ``hardware`` or ``hardware:LINE`` -> (mode, line or None)."""
    mode, _, line = trigger.partition(":")
    if mode not in TRIGGER_MODES or (line and mode != "hardware"):
        raise ZsadError(
            f"trigger {trigger!r}: expected free, software, hardware or hardware:LINE (e.g. "
            "hardware:Line1)"
        )
    if mode == "hardware":
        return mode, line or "Line0"
    return mode, None


@dataclass
class _Pending:
    part_id: str | None
    at: float  # time.monotonic() of the trigger


class FrameHub:
    """Frames from a grabbing thread to the reader, by the trigger mode's rule."""

    def __init__(self, mode: str, camera_triggered: bool = False) -> None:
        self.mode = mode
        self.camera_triggered = camera_triggered
        self.dropped = 0
        self._ready: deque[tuple[Any, float, str | None]] = deque()
        self._pending: deque[_Pending] = deque()
        self._error: BaseException | None = None
        self._changed = threading.Condition()

    def put(self, take: Callable[[], Any], arrived: float) -> None:
        """Offer a frame that reached the host at ``arrived`` (time.monotonic()); ``take()``
        copies it out of the camera's buffer and is called only when the frame is kept."""
        with self._changed:
            if self.mode == "free":
                self.dropped += len(self._ready)
                self._ready.clear()
                self._ready.append((take(), time.time(), None))
            elif self.mode == "hardware":
                self._ready.append((take(), time.time(), None))
            elif self._pending and (self.camera_triggered or self._pending[0].at <= arrived):
                self._ready.append((take(), time.time(), self._pending.popleft().part_id))
            else:
                self.dropped += 1
                return
            self._changed.notify_all()

    def want(self, part_id: str | None) -> None:
        """Note a software trigger; the frame that answers it will carry ``part_id``."""
        with self._changed:
            self._pending.append(_Pending(part_id, time.monotonic()))
            self._changed.notify_all()  # a grabbing thread may be waiting for a trigger

    def wanted(self, timeout_s: float) -> bool:
        """Whether a trigger waits for a frame, waiting up to ``timeout_s`` for one."""
        with self._changed:
            return self._changed.wait_for(lambda: bool(self._pending), timeout_s)

    def skipped(self, count: int = 1) -> None:
        """Count frames the grabbing thread dropped without offering them."""
        with self._changed:
            self.dropped += count

    def overdue(self, timeout_s: float) -> list[str | None]:
        """Give up the triggers waiting longer than ``timeout_s``: their part ids, oldest first."""
        late = time.monotonic() - timeout_s
        given_up = []
        with self._changed:
            while self._pending and self._pending[0].at <= late:
                given_up.append(self._pending.popleft().part_id)
        return given_up

    def abandon(self) -> list[str | None]:
        """Give up every trigger still waiting (the camera went away): their part ids."""
        with self._changed:
            given_up = [pending.part_id for pending in self._pending]
            self._pending.clear()
        return given_up

    def stop(self) -> tuple[list[str | None], list[str | None]]:
        """Give up every trigger not yet handed to the reader (the reader stops): the part ids
        of those still waiting for a frame, and of those whose frame came but was not read."""
        with self._changed:
            waiting = [pending.part_id for pending in self._pending]
            self._pending.clear()
            unread: list[str | None] = []
            if self.mode == "software":
                unread = [part_id for _, _, part_id in self._ready]
                self._ready.clear()
        return waiting, unread

    def fail(self, error: BaseException) -> None:
        """Hand the grabbing thread's error to the reader."""
        with self._changed:
            self._error = error
            self._changed.notify_all()

    def get(self, timeout_s: float) -> tuple[Any, float, str | None] | None:
        """(what ``take()`` gave, time.time(), part id) of the next frame, or None after
        ``timeout_s``."""
        with self._changed:
            self._changed.wait_for(lambda: self._ready or self._error, timeout_s)
            if self._ready:
                return self._ready.popleft()
            if self._error is not None:
                raise self._error
            return None


class GrabbingSource:
    """A source whose subclass grabs raw frames on a background thread (``_grab``) and converts
    to RGB (``_convert``) only the frames ``read`` delivers."""

    # A camera that keeps the frames it sends in buffers of its own can be left unread while no
    # trigger waits: a streaming camera answering host-side triggers then costs nothing between
    # them. Its frames left waiting are older than the trigger, so they are drained (``_drain``)
    # before it is read again. A source that must keep reading (an RTSP stream) says False.
    rests_between_triggers = False

    name: str

    def __init__(self, name: str, trigger: str = "free") -> None:
        self.name = name
        self.trigger_mode, self.trigger_line = parse_trigger(trigger)
        self.hub = FrameHub(self.trigger_mode)
        self._count = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def dropped(self) -> int:
        """Frames that arrived but no reader or trigger took."""
        return self.hub.dropped

    def _program(
        self,
        has: Callable[[str], bool],
        set_feature: Callable[[str, Any], None],
        settings: dict[str, Any],
    ) -> None:
        """Set the trigger, then ``settings``, by the GenICam standard feature names
        (TriggerSelector, TriggerMode, TriggerSource), through a camera API's own ``has`` and
        ``set_feature``. A camera without TriggerSoftware is triggered on the host."""
        if self.trigger_mode == "free":
            if has("TriggerMode"):
                set_feature("TriggerMode", "Off")
        elif self.trigger_mode == "hardware" or has("TriggerSoftware"):
            if has("TriggerSelector"):
                set_feature("TriggerSelector", "FrameStart")
            set_feature("TriggerMode", "On")
            software = self.trigger_mode == "software"
            set_feature("TriggerSource", "Software" if software else self.trigger_line)
            self.hub.camera_triggered = software
        for name, value in settings.items():
            set_feature(name, value)

    def open(self) -> None:
        """Connect (``_connect``) and start the grabbing thread."""
        self._connect()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"grab {self.name}", daemon=True)
        self._thread.start()

    def read(self, timeout_s: float) -> CameraFrame | None:
        """The next frame by the trigger mode's rule, or None after ``timeout_s`` seconds."""
        if self._thread is None:
            raise ZsadError(f"{self.name}: read before open")
        got = self.hub.get(timeout_s)
        if got is None:
            return None
        raw, timestamp, part_id = got
        # Converted here, on the reader's thread: a frame dropped unread costs no conversion.
        frame = CameraFrame(self._convert(raw), self.name, self._count, timestamp, part_id)
        self._count += 1
        return frame

    def trigger(self, part_id: str | None = None) -> None:
        """Ask for one frame that will carry ``part_id`` (software trigger mode only)."""
        if self.trigger_mode != "software":
            raise ZsadError(
                f"{self.name}: trigger() needs trigger='software' (this source runs "
                f"{self.trigger_mode})"
            )
        self.hub.want(part_id)
        self._fire()

    def close(self) -> None:
        """Stop the grabbing thread and release the camera (``_disconnect``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._disconnect()

    def __iter__(self) -> Iterator[CameraFrame]:
        """Frames until the source is closed."""
        while self._thread is not None:
            frame = self.read(0.1)
            if frame is not None:
                yield frame

    def __enter__(self) -> GrabbingSource:
        """Open the source."""
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the source."""
        self.close()

    def _run(self) -> None:
        try:
            resting = True  # frames the camera sent before the first trigger are stale too
            while not self._stop.is_set():
                if self._may_rest():
                    if not self.hub.wanted(0.1):
                        self._check_alive()  # a camera gone is said now, not at the next trigger
                        resting = True
                        continue
                    if resting:
                        self._drain()
                        resting = False
                self._grab(0.1)
        except BaseException as exc:  # the reader sees it on its next read
            self.hub.fail(exc)

    def _connect(self) -> None:
        raise NotImplementedError

    def _may_rest(self) -> bool:
        host_triggered = self.trigger_mode == "software" and not self.hub.camera_triggered
        return host_triggered and self.rests_between_triggers

    def _grab(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for one frame and offer it (``self.hub.put``)."""
        raise NotImplementedError

    def _drain(self) -> None:
        """Give back, unread, every frame the camera holds now (sources that rest only)."""
        raise NotImplementedError

    def _check_alive(self) -> None:
        """Raise if the camera is known to be gone; sources that cannot tell do nothing."""

    def _convert(self, raw: Any) -> np.ndarray:
        """RGB uint8 (H, W, 3) of a frame as ``_grab`` took it; sources that take RGB keep it."""
        return raw

    def _fire(self) -> None:
        """Tell the camera to expose now; sources without a camera-side trigger do nothing."""

    def _disconnect(self) -> None:
        raise NotImplementedError
