"""A factory station: score images one by one as they arrive, and never lose or repeat a result.

Per image: decode (in the source), encode, score, write the map and overlay atomically, then one
line in the journal (results.jsonl). The journal is the only truth on restart: what it lists
is done, everything else is offered again. A restart also puts the last K scored images back in
the STAPS bank (re-encoded from their files) and reloads the BGMPS weights from
``station-state.json``, so scoring carries on as if it had not stopped.

SIGINT/SIGTERM finish the current image and exit cleanly; a second signal stops at once (the
journal is still consistent). ``status.json`` is rewritten every few seconds for operators.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from zsad.api.records import safe_stem, save_result_files
from zsad.api.results import Result
from zsad.api.scorers import Scored, StreamScorer
from zsad.data.images import ImageLoadError, load_image
from zsad.errors import ZsadError
from zsad.formats.atomic import write_json
from zsad.runtime.backend import EncoderBackend
from zsad.runtime.preprocess import preprocess_image
from zsad.station.frames import FileVersion, Frame, FrameKey, Rejection
from zsad.station.journal import Journal

RESULTS = "results.jsonl"
STATUS = "status.json"
STATE = "station-state.json"
REJECTED = "rejected"


@dataclass
class StationOptions:
    """How the station writes and paces itself."""

    out: Path
    threshold: float | None = None
    overlays: bool = True
    status_interval_s: float = 5.0
    poll_s: float = 0.2
    idle_exit_s: float | None = None  # watch: stop after this long with nothing to do
    move_rejected: bool = True  # hot folder: move bad files out; a path list: copy them
    echo: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))


class _Stop(Exception):
    """Raised by the signal handler while the station waits on a blocking source."""


@dataclass
class _Held(FileVersion):
    """What the station keeps of a frame until its score arrives (not the pixels)."""

    seen_at: float
    decode_s: float
    encode_s: float


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def rss_mb() -> float:
    """Resident memory of this process in MiB (peak where /proc is missing)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class Station:
    """Runs a source of frames through a backend and a stream scorer into OUT."""

    def __init__(
        self,
        backend: EncoderBackend,
        scorer: StreamScorer,
        source_factory: Callable[[set[FrameKey]], Any],
        options: StationOptions,
    ) -> None:
        self.backend = backend
        self.scorer = scorer
        self.source_factory = source_factory
        self.options = options
        self.out = options.out
        self._stop = threading.Event()
        self._blocking = False
        self._held: dict[int, _Held] = {}
        self._latencies: deque[float] = deque(maxlen=200)
        self._stamps: deque[float] = deque(maxlen=1000)
        self.scored = 0
        self.rejected = 0
        self._last: dict[str, Any] | None = None
        self._state_written: dict[str, Any] | None = None
        self._started = self._status_at = time.monotonic()
        self.source: Any = None

    # ------------------------------------------------------------------ public

    def run(self) -> dict[str, Any]:
        """Resume from OUT, then process frames until stopped, idle or out of input."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.out / RESULTS)
        try:
            return self._run()
        except OSError as exc:
            # A full disk or a broken mount: the journal is still whole, so say so and stop.
            raise ZsadError(
                f"{exc.filename or self.out}: {exc.strerror or exc}; every result written so far "
                "is intact, fix this and restart to resume"
            ) from exc
        finally:
            self.journal.close()

    # ------------------------------------------------------------------ run

    def _run(self) -> dict[str, Any]:
        if self.journal.repaired_bytes:
            self.options.echo(
                f"zsad: {self.journal.path}: cut a partial last line "
                f"({self.journal.repaired_bytes} bytes) left by an interrupted write"
            )
        done = self._resume()
        self.source = self.source_factory(done)
        self.done = done
        self._status("running")
        handlers = self._install_signals()
        stopped_by = "input exhausted"
        try:
            stopped_by = self._loop()
        except _Stop:
            stopped_by = "signal"
        finally:
            self._restore_signals(handlers)
        if stopped_by != "signal":
            self._flush_held()
        summary = self._status("stopped", stopped_by=stopped_by)
        self.options.echo(
            f"zsad: stopped ({stopped_by}): {self.scored} scored, {self.rejected} rejected "
            f"this run -> {self.journal.path}"
        )
        return summary

    def _loop(self) -> str:
        idle_since = time.monotonic()
        while not self._stop.is_set():
            self._blocking = self.source.blocking
            try:
                item = self.source.next()
            finally:
                self._blocking = False
            now = time.monotonic()
            if now - self._status_at >= self.options.status_interval_s:
                self._status("running")
            if item is None:
                if self.source.exhausted:
                    return "input exhausted"
                idle_exit = self.options.idle_exit_s
                if idle_exit is not None and now - idle_since >= idle_exit:
                    return f"idle for {idle_exit:g} s"
                self._stop.wait(self.options.poll_s)
                continue
            idle_since = now
            if isinstance(item, Rejection):
                self._reject(item)
            else:
                self._process(item)
        return "signal"

    # ------------------------------------------------------------------ resume

    def _resume(self) -> set[FrameKey]:
        done: set[FrameKey] = set()
        recent: deque[dict[str, Any]] = deque(maxlen=max(self.scorer.restore_count, 1))
        next_position = 0
        for record in self.journal.records():
            done.add((record["name"], record["size"], record["mtime_ns"]))
            if record.get("index") is not None:
                next_position = max(next_position, int(record["index"]) + 1)
                recent.append(record)
            elif record.get("decision") == "rejected":
                self._finish_rejection(record)
        self._next_position = next_position
        state_file = self.out / STATE
        if state_file.is_file():
            self._state_written = json.loads(state_file.read_text())
            self.scorer.load_state(self._state_written)
        if self.scorer.restore_count and recent:
            self._restore_bank(list(recent))
        return done

    def _restore_bank(self, records: list[dict[str, Any]]) -> None:
        restored = 0
        for record in records:
            try:
                image = load_image(record["path"])
            except ImageLoadError as exc:
                self.options.echo(f"zsad: bank: skipped {exc}")
                continue
            self.scorer.restore(self._encode(image), record)
            restored += 1
        self.options.echo(
            f"zsad: resumed at image {self._next_position}; bank refilled with {restored} of "
            f"the last {len(records)} scored images"
        )

    # ------------------------------------------------------------------ per frame

    def _encode(self, image: np.ndarray) -> dict[str, np.ndarray]:
        b = self.backend
        pixels = preprocess_image(image, b.image_size, b.mean, b.std)[None]
        return b.run(pixels)

    def _process(self, frame: Frame) -> None:
        position = self._next_position
        self._next_position += 1
        # Never offered again in this run, even while held for warm-up; the journal alone
        # decides what a restart skips.
        self.done.add(frame.key)
        start = time.perf_counter()
        outputs = self._encode(frame.image)
        encoded = time.perf_counter()
        self._held[position] = _Held(
            frame.path,
            frame.name,
            frame.size,
            frame.mtime_ns,
            frame.seen_at,
            frame.decode_s,
            encoded - start,
        )
        results = self.scorer.add(outputs, position)
        score_s = time.perf_counter() - encoded
        self._write_results(results, score_s, {position: frame.image})

    def _flush_held(self) -> None:
        if not self._held:
            return
        start = time.perf_counter()
        try:
            results = self.scorer.flush()
        except ValueError as exc:
            self.options.echo(f"zsad: {len(self._held)} image(s) left unscored: {exc}")
            return
        self._write_results(results, time.perf_counter() - start, {})

    def _write_results(
        self, results: list[Scored], score_s: float, images: dict[int, np.ndarray]
    ) -> None:
        for result in results:
            held = self._held.pop(result.position)
            start = time.perf_counter()
            record = self._record(held, result, images.get(result.position))
            write_s = time.perf_counter() - start
            record["timing"] = {
                "decode_ms": round(held.decode_s * 1e3, 2),
                "encode_ms": round(held.encode_s * 1e3, 2),
                "score_ms": round(score_s * 1e3, 2),
                "write_ms": round(write_s * 1e3, 2),
                "latency_ms": round((time.monotonic() - held.seen_at) * 1e3, 1),
            }
            self.journal.append(record)
            self.scored += 1
            self._stamps.append(time.monotonic())
            self._latencies.append(record["timing"]["latency_ms"])
            self._last = {k: record[k] for k in ("path", "score", "decision")}
        self._save_state()

    def _record(self, held: _Held, result: Scored, image: np.ndarray | None) -> dict[str, Any]:
        scored = Result(str(held.path), result.score, result.anomaly_map, self.backend.image_size)
        span = self.scorer.map_range() if self.options.overlays else None
        files = save_result_files(self.out, result.position, scored, image, span)
        threshold = self.options.threshold
        decision = None if threshold is None else ("NG" if result.score > threshold else "OK")
        return {
            "index": result.position,
            "path": str(held.path),
            "name": held.name,
            "size": held.size,
            "mtime_ns": held.mtime_ns,
            "score": result.score,
            "raw_score": result.raw_score,
            "decision": decision,
            "threshold": threshold,
            "phase": result.phase,
            "map": files["map"],
            "overlay": files.get("overlay"),
            "time": _now_iso(),
            "error": None,
        }

    # ------------------------------------------------------------------ rejections

    def _reject(self, item: Rejection) -> None:
        # Milliseconds since the epoch: unique across restarts, and sorts by time.
        stem = safe_stem(int(time.time() * 1000), Path(item.name))
        target = self.out / REJECTED / (stem + Path(item.name).suffix)
        record = {
            "index": None,
            "path": str(item.path),
            "name": item.name,
            "size": item.size,
            "mtime_ns": item.mtime_ns,
            "score": None,
            "decision": "rejected",
            "error": item.reason,
            "rejected_to": str(target.relative_to(self.out)),
            "time": _now_iso(),
        }
        # Journal first: a kill before the move leaves a record, and the restart finishes it.
        self.journal.append(record)
        self.done.add(item.key)
        self.rejected += 1
        self._finish_rejection(record)
        self.options.echo(f"zsad: rejected {item.path}: {item.reason}")

    def _finish_rejection(self, record: dict[str, Any]) -> None:
        """Move (hot folder) or copy (path list) a rejected file and write its reason beside it."""
        source = Path(record["path"])
        target = self.out / record["rejected_to"]
        target.parent.mkdir(parents=True, exist_ok=True)
        reason = target.with_name(target.name + ".reason.txt")
        if not reason.exists():
            reason.write_text(f"{record['path']}: {record['error']}\n")
        try:
            stat = source.stat()
        except OSError:
            return  # already moved, or gone
        if (stat.st_size, stat.st_mtime_ns) != (record["size"], record["mtime_ns"]):
            return  # a newer file of that name: not the one rejected
        try:
            if self.options.move_rejected:
                shutil.move(source, target)
            elif not target.exists():
                shutil.copy2(source, target)
        except OSError as exc:
            self.options.echo(f"zsad: could not move {source} to {target}: {exc}")

    # ------------------------------------------------------------------ state and status

    def _save_state(self) -> None:
        state = self.scorer.state()
        if state and state != self._state_written:
            write_json(self.out / STATE, state)
            self._state_written = state

    def _status(self, state: str, **extra: Any) -> dict[str, Any]:
        now = time.monotonic()
        recent = [t for t in self._stamps if now - t <= 60.0]
        span = now - recent[0] if len(recent) > 1 else 0.0
        latencies = sorted(self._latencies)
        held = self.scorer.held()
        if state == "running" and held:
            state = "warming-up"
        status = {
            "state": state,
            "pid": os.getpid(),
            "updated": _now_iso(),
            "uptime_s": round(now - self._started, 1),
            "scored": self.scored,
            "rejected": self.rejected,
            "held_for_warm_up": held,
            "backlog": 0 if self.source is None else self.source.backlog,
            "images_per_s_last_minute": round((len(recent) - 1) / span, 2) if span else 0.0,
            "latency_ms_p50": latencies[len(latencies) // 2] if latencies else None,
            "last": self._last,
            "rss_mb": rss_mb(),
            "backend": self.backend.name,
            "threshold": self.options.threshold,
            **self.scorer.describe(),
            **extra,
        }
        write_json(self.out / STATUS, status)
        self._status_at = now
        if state != "stopped":
            last = self._last or {}
            score = "-" if last.get("score") is None else f"{last['score']:.4g}"
            self.options.echo(
                f"zsad: {state}: {self.scored} scored, {self.rejected} rejected, backlog "
                f"{status['backlog']}, {status['images_per_s_last_minute']} img/s, last score "
                f"{score} {last.get('decision') or ''}".rstrip()
            )
        return status

    # ------------------------------------------------------------------ signals

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, self._on_signal)
        return handlers

    def _restore_signals(self, handlers: dict[int, Any]) -> None:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stop.is_set():
            raise KeyboardInterrupt  # a second signal: stop now
        self._stop.set()
        self.options.echo(f"zsad: {signal.Signals(signum).name}: finishing the current image")
        if self._blocking:
            raise _Stop
