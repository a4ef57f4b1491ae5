"""What a station reports in OUT/status.json: counts, pace and latency, kept as frames pass."""

from __future__ import annotations

import os
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any

from zsad.api.results import now_iso

STATUS = "status.json"


def iso_time(seconds: float | None) -> str | None:
    """``time.time()`` seconds as ISO 8601 UTC with milliseconds; None stays None."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def rss_mb() -> float:
    """Resident memory of this process in MiB (peak where /proc is missing)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class StatusReport:
    """Counts of this run and of the whole journal, images/s over the last minute, latency."""

    def __init__(self) -> None:
        self.scored = 0  # this run
        self.rejected = 0
        self.journal_scored = 0  # the whole journal: counted at resume, then with each record
        self.journal_rejected = 0
        self.last: dict[str, Any] | None = None  # the last scored record, in short
        self._latencies: deque[float] = deque(maxlen=200)
        self._stamps: deque[float] = deque(maxlen=1000)
        self._started = self.written_at = time.monotonic()

    def note_scored(self, record: dict[str, Any], record_id: int) -> None:
        """Count a scored record just journaled under ``record_id``."""
        self.scored += 1
        self.journal_scored += 1
        self._stamps.append(time.monotonic())
        self._latencies.append(record["timing"]["latency_ms"])
        keys = ("index", "path", "score", "decision", "threshold")
        self.last = {"id": record_id, **{k: record[k] for k in keys}}

    def note_rejected(self) -> None:
        """Count a rejection just journaled."""
        self.rejected += 1
        self.journal_rejected += 1

    def due(self, interval_s: float) -> bool:
        """Whether the last status is older than ``interval_s``."""
        return time.monotonic() - self.written_at >= interval_s

    def build(self, state: str, facts: dict[str, Any]) -> dict[str, Any]:
        """The status document: ``state``, the counts and pace, then the station's ``facts``."""
        now = time.monotonic()
        recent = [t for t in self._stamps if now - t <= 60.0]
        span = now - recent[0] if len(recent) > 1 else 0.0
        latencies = sorted(self._latencies)
        self.written_at = now
        return {
            "state": state,
            "pid": os.getpid(),
            "updated": now_iso(),
            "uptime_s": round(now - self._started, 1),
            "journal": {"scored": self.journal_scored, "rejected": self.journal_rejected},
            "this_run": {"scored": self.scored, "rejected": self.rejected},
            "images_per_s_last_minute": round((len(recent) - 1) / span, 2) if span else 0.0,
            "latency_ms_p50": latencies[len(latencies) // 2] if latencies else None,
            "last": self.last,
            "rss_mb": rss_mb(),
            **facts,
        }

    def line(self, status: dict[str, Any]) -> str:
        """The one-line summary of ``status`` a running station prints."""
        last = self.last or {}
        score = "-" if last.get("score") is None else f"{last['score']:.4g}"
        return (
            f"zsad: {status['state']}: {self.scored} scored, {self.rejected} rejected this run "
            f"({self.journal_scored} and {self.journal_rejected} in the journal), backlog "
            f"{status['backlog']}, {status['images_per_s_last_minute']} img/s, last score "
            f"{score} {last.get('decision') or ''}"
        ).rstrip()
