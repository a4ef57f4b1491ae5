"""What the line sinks share with the station, and the one place the station drives them from.

The station never waits on a sink: it appends to the journal, then wakes the sinks (a condition
variable), and hands them each status it writes. Sinks run on their own threads and read the
journal through a ``JournalFeed``; whatever they are doing, the station scores on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from zsad.errors import ZsadError, echo_stderr

RESULTS = "results.jsonl"
MAX_PART_ID = 64  # characters of a part id given with a trigger
NO_TRIGGERS = (
    "this station reads a hot folder; triggers need a camera --source with --trigger software"
)

Trigger = Callable[[str | None], None]


class TriggerRefused(ZsadError):
    """A trigger the station cannot serve: ``busy`` when it may succeed later (the camera is
    unreachable), else never in this configuration."""

    def __init__(self, message: str, busy: bool = False) -> None:
        super().__init__(message)
        self.busy = busy


def check_part_id(value: object) -> str | None:
    """A part id as given with a trigger: None, or 1 to MAX_PART_ID printable characters."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_PART_ID:
        raise ZsadError(f"part id {str(value)[:80]!r}: give 1 to {MAX_PART_ID} characters, or none")
    if not value.isprintable():
        raise ZsadError(f"part id {value!r}: control characters are not taken")
    return value


class LineContext:
    """The station as the sinks see it: its OUT folder, journal growth, status and threshold."""

    def __init__(self, out: Path, echo: Callable[[str], None] = echo_stderr) -> None:
        self.out = out
        self.journal = out / RESULTS
        self.echo = echo
        self._grew = threading.Condition()
        self._records = 0
        self._status: dict[str, Any] = {"state": "starting"}
        self._status_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._record_events: list[threading.Event] = []
        self._threshold_request: tuple[float | None, str] | None = None  # the newest wins
        self._trigger: Trigger | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ station side

    def journal_grew(self, records: int) -> None:
        """The journal now holds ``records`` records; wake every sink waiting for more."""
        with self._grew:
            self._records = records
            self._grew.notify_all()
        for event in self._record_events:
            event.set()

    def publish_status(self, status: dict[str, Any]) -> None:
        """Hand the status the station just wrote to the sinks (listeners run on this thread
        and must only store it or wake their own thread)."""
        with self._lock:
            self._status = dict(status)
            listeners = list(self._status_listeners)
        for listener in listeners:
            listener(self._status)

    def serve_triggers(self, trigger: Trigger | None) -> None:
        """Send the sinks' triggers to ``trigger`` (the camera's); None refuses them."""
        with self._lock:
            self._trigger = trigger

    def take_threshold_request(self) -> tuple[float | None, str] | None:
        """The newest threshold a sink asked for (value, who asked), once; None if none."""
        with self._lock:
            request, self._threshold_request = self._threshold_request, None
            return request

    # ------------------------------------------------------------------ sink side

    @property
    def records(self) -> int:
        """How many records the journal holds (as of the last append)."""
        return self._records

    def wait_for_records(self, known: int, timeout: float) -> int:
        """Block until the journal holds more than ``known`` records or ``timeout`` passes;
        returns the count."""
        deadline = time.monotonic() + timeout
        with self._grew:
            while self._records <= known:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._grew.wait(left)
            return self._records

    def on_records(self, event: threading.Event) -> None:
        """Set ``event`` whenever the journal grows (for a sink that waits on other things too)."""
        self._record_events.append(event)

    def status(self) -> dict[str, Any]:
        """The station's latest status (as in OUT/status.json)."""
        with self._lock:
            return dict(self._status)

    def on_status(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call ``listener(status)`` with every new status (on the station's thread)."""
        with self._lock:
            self._status_listeners.append(listener)

    def trigger(self, part_id: object) -> str | None:
        """Ask the camera for one frame carrying ``part_id``; the part id as taken, or
        TriggerRefused (ZsadError for a bad part id)."""
        part = check_part_id(part_id)
        with self._lock:
            trigger = self._trigger
        if trigger is None:
            raise TriggerRefused(NO_TRIGGERS)
        trigger(part)
        return part

    def request_threshold(self, value: float | None, source: str) -> None:
        """Ask the station to use a new OK/NG threshold from its next image on."""
        with self._lock:
            self._threshold_request = (value, source)


class Sink(Protocol):
    """One interface to the line: started after the journal is repaired, stopped at the end."""

    name: str

    def start(self, context: LineContext) -> None:
        """Start serving or publishing on the sink's own threads; return at once."""

    def describe(self) -> dict[str, Any]:
        """What status.json says of this sink (connected, backlog, address...)."""

    def stop(self, timeout: float) -> None:
        """Finish within ``timeout`` seconds, delivering what can be delivered by then."""


class LineHub:
    """Starts, describes and stops a station's sinks."""

    def __init__(self, context: LineContext, sinks: list[Sink]) -> None:
        self.context = context
        self.sinks = sinks

    def start(self) -> None:
        """Start every sink; a sink that cannot start is stopped with the others and raises."""
        started: list[Sink] = []
        try:
            for sink in self.sinks:
                sink.start(self.context)
                started.append(sink)
        except BaseException:
            for sink in reversed(started):
                sink.stop(1.0)
            raise

    def describe(self) -> dict[str, Any]:
        """Each sink's own description, by name."""
        return {sink.name: sink.describe() for sink in self.sinks}

    def stop(self, timeout: float = 3.0) -> None:
        """Stop every sink, sharing ``timeout`` between them."""
        deadline = time.monotonic() + timeout
        for sink in reversed(self.sinks):
            sink.stop(max(0.1, deadline - time.monotonic()))
