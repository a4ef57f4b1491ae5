"""A factory station: score images one by one as they arrive, and never lose or repeat a result.

Per image: decode (in the source), encode, score, write the map and overlay atomically, then one
line in the journal (results.jsonl). The journal is the only truth on restart: what it lists
is done, everything else is offered again. A restart also puts the last K scored images back in
the STAPS bank (re-encoded from their files) and reloads the BGMPS weights from
``station-state.json``, so scoring carries on as if it had not stopped.

SIGINT/SIGTERM finish the current image and exit cleanly; a second signal stops at once (the
journal is still consistent). ``status.json`` is rewritten every few seconds for operators.

A frame can kill the process (the kernel's OOM killer, a crash in a decoder); restarted by a
service manager, the station would meet it first again, forever. So ``in-progress.json`` names
the frame in hand from just before its decode until its record is written, and the step it is
in; a clean stop removes it. A restart that finds it counts a death on that frame only if the
step was the frame's own decode, encode or scoring: a kill from outside (an operator, a service
manager) usually lands elsewhere, and a death at start-up, during the bank refill or while
records are written is not the frame's doing. A frame that was in its own work at three deaths
in a row is rejected instead of tried a fourth time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from zsad.api.records import safe_stem, save_result_files
from zsad.api.results import Result, decide
from zsad.api.scorers import Scored, StreamScorer
from zsad.data.images import ImageLoadError, load_image_bounded
from zsad.errors import ServiceUnavailable, ZsadError, echo_stderr
from zsad.formats.atomic import copy_file, make_folders, move_file, write_json, write_text
from zsad.runtime.backend import EncoderBackend
from zsad.runtime.encode import encode_image
from zsad.runtime.preprocess import decode_side
from zsad.station.frames import FileVersion, Frame, FrameKey, Rejection
from zsad.station.journal import Journal
from zsad.station.line.hub import LineContext, LineHub, Sink

RESULTS = "results.jsonl"
STATUS = "status.json"
STATE = "station-state.json"
REJECTED = "rejected"
IN_PROGRESS = "in-progress.json"
THRESHOLD = "threshold.json"  # a threshold set while running (HTTP API); it outlives restarts
POISON_DEATHS = 3  # deaths in a row in the same frame's own work before it is rejected
POISON_REASON = "the station stopped three times in a row while processing this frame"
# The steps of a frame's own work: a death in any other counts nothing against it.
OWN_STEPS = ("decode", "encode", "score")
# A remote encoder that is down is retried after 0.5 s, 1 s, 2 s ... at most this often.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0


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
    echo: Callable[[str], None] = echo_stderr
    sinks: list[Sink] = field(default_factory=list)  # MQTT, OPC UA, HTTP: fed from the journal


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


def _iso(seconds: float | None) -> str | None:
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
        # Warm-up images journaled before a restart and held again: scored with the set, not
        # journaled twice.
        self._journaled_warm_up: set[int] = set()
        self._latencies: deque[float] = deque(maxlen=200)
        self._stamps: deque[float] = deque(maxlen=1000)
        self.scored = 0  # this run
        self.rejected = 0
        self.journal_scored = 0  # the whole journal: counted at resume, then with each record
        self.journal_rejected = 0
        self._final: dict[str, Any] | None = None  # the stopped (or error) status, once written
        self._last: dict[str, Any] | None = None
        self._state_written: dict[str, Any] | None = None
        self._started = self._status_at = time.monotonic()
        self.source: Any = None
        self._in_hand: FrameKey | None = None  # the frame in-progress.json names
        self._in_step: str | None = None  # and the step it names
        self._suspect: tuple[FileVersion, int, str | None] | None = None  # a dead run's frame
        self._deaths: dict[FrameKey, int] = {}  # earlier deaths in a row in this frame's own work
        self._source_missing_since: float | None = None
        self._encoder_down_since: float | None = None  # a remote encoder unreachable since
        self._encoder_error: str | None = None
        self.encoder_outages = 0

    # ------------------------------------------------------------------ public

    def run(self) -> dict[str, Any]:
        """Resume from OUT, then process frames until stopped, idle or out of input."""
        make_folders(self.out)
        self.journal = Journal(self.out / RESULTS)
        self.line = LineHub(LineContext(self.out, self.options.echo), self.options.sinks)
        self.line.context.journal_grew(self.journal.count)
        try:
            # Before the sinks start and the bank refills: a death there is not a frame's.
            self._count_death()
            self.line.start()
            return self._run()
        except OSError as exc:
            # Not the frame's fault: a restart must not count it against the frame in hand.
            self._release_in_hand(quiet=True)
            # A full disk or a broken mount: the journal is still whole, so say so and stop.
            error = ZsadError(
                f"{exc.filename or self.out}: {exc.strerror or exc}; every result written so far "
                "is intact, fix this and restart to resume"
            )
            self._report_error(error)
            raise error from exc
        except ZsadError as exc:
            self._report_error(exc)
            raise
        finally:
            self.line.stop()
            self._show_sinks_stopped()
            self.journal.close()

    # ------------------------------------------------------------------ run

    def _run(self) -> dict[str, Any]:
        if self.journal.repaired_bytes:
            self.options.echo(
                f"zsad: {self.journal.path}: cut a partial last line "
                f"({self.journal.repaired_bytes} bytes) left by an interrupted write"
            )
        self._load_threshold()
        done = self._resume()
        self.done = done
        self._reject_poison()
        self.source = self.source_factory(done)
        if hasattr(self.source, "on_decode"):
            self.source.on_decode = self._take_in_hand
        self._status("running")
        handlers = self._install_signals()
        stopped_by = "input exhausted"
        try:
            stopped_by = self._loop()
        except _Stop:
            self._release_in_hand()
            stopped_by = "signal"
        except KeyboardInterrupt:
            if self._stop.is_set():
                self._release_in_hand()  # a second signal: the operator's stop, not a death
            raise
        finally:
            self._restore_signals(handlers)
        if stopped_by != "signal":
            self._flush_held()
        summary = self._status("stopped", stopped_by=stopped_by)
        self.options.echo(
            f"zsad: stopped ({stopped_by}): {self.scored} scored, {self.rejected} rejected "
            f"this run; {self.journal_scored} scored, {self.journal_rejected} rejected in "
            f"{self.journal.path}"
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
            self._watch_source()
            for line in getattr(self.source, "notices", list)():
                self.options.echo(f"zsad: {line}")
            self._take_threshold_request()
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
        warm_up: list[dict[str, Any]] = []
        next_position = 0
        for record in self.journal.records():
            done.add((record["name"], record["size"], record["mtime_ns"]))
            if record.get("index") is not None:
                self.journal_scored += 1
                next_position = max(next_position, int(record["index"]) + 1)
                recent.append(record)
                if record.get("phase") == "warm-up":
                    warm_up.append(record)
            elif record.get("decision") == "rejected":
                self.journal_rejected += 1
                self._finish_rejection(record)
        self._next_position = next_position
        state_file = self.out / STATE
        if state_file.is_file():
            self._state_written = json.loads(state_file.read_text())
            self.scorer.load_state(self._state_written)
        if not self.scorer.restore_count or not recent:
            return done
        # The overlay range is saved once every warm-up record is written: without it, the last
        # run died while writing them, and only the whole set scored again gives a clean run's
        # scores and range.
        if self.scorer.map_range() is None and len(warm_up) == self.journal_scored:
            self._hold_warm_up_again(warm_up)
        else:
            self._restore_bank(list(recent))
        return done

    def _reencode(
        self, records: list[dict[str, Any]], what: str
    ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Each journaled image that still decodes, with its encoder outputs, in order."""
        for record in records:
            try:
                image = load_image_bounded(record["path"], self._decode_side)
            except ImageLoadError as exc:
                self.options.echo(f"zsad: {what}: skipped {exc}")
                continue
            outputs = self._encode(image, None)
            if outputs is None:
                return  # stopped while the encoder was down; the loop sees the stop
            yield record, outputs

    def _restore_bank(self, records: list[dict[str, Any]]) -> None:
        restored = 0
        for record, outputs in self._reencode(records, "bank"):
            self.scorer.restore(outputs, record)
            restored += 1
        self.options.echo(
            f"zsad: resumed at image {self._next_position}; bank refilled with {restored} of "
            f"the last {len(records)} scored images"
        )

    def _hold_warm_up_again(self, records: list[dict[str, Any]]) -> None:
        """Hold the warm-up images journaled before the restart again, in arrival order."""
        held = 0
        for record, outputs in self._reencode(records, "warm-up"):
            position = int(record["index"])
            self._journaled_warm_up.add(position)
            held += 1
            # The last run may have journaled the whole set: then it is scored here.
            self._write_results(self.scorer.add(outputs, position), 0.0, {})
        self.options.echo(
            f"zsad: resumed at image {self._next_position} during warm-up (the last run stopped "
            f"before the overlay range was saved); {held} of {len(records)} journaled warm-up "
            "images held again, to be scored with the rest of the set"
        )

    @property
    def _decode_side(self) -> int:
        return decode_side(self.backend.image_size)

    # ------------------------------------------------------------------ frames that kill

    def _take_in_hand(self, frame: FileVersion | None, step: str = "decode") -> None:
        """Name the frame being worked on, and the step, in OUT (None: nothing is in hand)."""
        if frame is None:
            self._release_in_hand()
            return
        if (frame.key, step) == (self._in_hand, self._in_step):
            return
        write_json(
            self.out / IN_PROGRESS,
            {
                "path": str(frame.path),
                "name": frame.name,
                "size": frame.size,
                "mtime_ns": frame.mtime_ns,
                "deaths": self._deaths.get(frame.key, 0),
                "step": step,
                "pid": os.getpid(),
                "since": _now_iso(),
            },
        )
        self._in_hand, self._in_step = frame.key, step

    def _release_in_hand(self, *, quiet: bool = False) -> None:
        """Nothing is in hand any more (the frame is done, or the stop was a clean one)."""
        try:
            (self.out / IN_PROGRESS).unlink(missing_ok=True)
        except OSError:
            if not quiet:
                raise
        self._in_hand = self._in_step = None

    def _count_death(self) -> None:
        """Count the death a dead run's marker shows, if it was in the frame's own work."""
        marker = self.out / IN_PROGRESS
        if not marker.exists():
            return
        try:
            left = json.loads(marker.read_text())
            frame = FileVersion(
                Path(left["path"]), str(left["name"]), int(left["size"]), int(left["mtime_ns"])
            )
            deaths, step = int(left.get("deaths", 0)), left.get("step")
        except (ValueError, KeyError, TypeError) as exc:
            self.options.echo(f"zsad: {marker}: ignored, unreadable ({exc})")
            marker.unlink()
            return
        if step in OWN_STEPS:
            deaths += 1
        self._suspect = (frame, deaths, step)
        # Kept, with the count and no step, until a frame is taken in hand: a death during
        # start-up then neither counts against the frame nor forgets its earlier deaths.
        write_json(marker, {**left, "deaths": deaths, "step": None, "pid": os.getpid()})

    def _reject_poison(self) -> None:
        """Reject the frame a dead run had in hand if it has died in its own work often enough."""
        if self._suspect is None:
            return
        frame, deaths, step = self._suspect
        self._suspect = None
        if frame.key in self.done:
            self._release_in_hand()  # its record was written: the run died after it, not on it
            return
        if deaths >= POISON_DEATHS:
            self._reject(Rejection(frame.path, *frame.key, POISON_REASON))
            self._release_in_hand()
            return
        self._deaths[frame.key] = deaths
        if step not in OWN_STEPS:
            where = f"while its {step} step ran" if step else "before it was in hand"
            self.options.echo(
                f"zsad: the last run stopped with {frame.path} in hand but {where}; not counted "
                f"against it ({deaths} of {POISON_DEATHS} deaths so far)"
            )
            return
        self.options.echo(
            f"zsad: the last run stopped while processing {frame.path} ({step}); trying it again "
            f"(it is rejected at {POISON_DEATHS} such stops in a row, {deaths} so far)"
        )

    # ------------------------------------------------------------------ per frame

    def _process(self, frame: Frame) -> None:
        position = self._next_position
        self._next_position += 1
        # Never offered again in this run, even while held for warm-up; the journal alone
        # decides what a restart skips.
        self.done.add(frame.key)
        self._take_in_hand(frame, "encode")
        start = time.perf_counter()
        outputs = self._encode(frame.image, frame)
        if outputs is None:
            return  # stopped while the encoder was down: not journaled, so offered again
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
        self._take_in_hand(frame, "score")
        results = self.scorer.add(outputs, position)
        score_s = time.perf_counter() - encoded
        for note in self.scorer.notes():
            self.options.echo(f"zsad: {note}")
        self._write_results(results, score_s, {position: frame.image})
        self._release_in_hand()

    def _encode(self, image: np.ndarray, frame: Frame | None) -> dict[str, np.ndarray] | None:
        """Encode one image; while a remote encoder is down, retry with backoff (the frame
        waits, nothing is lost) and report the outage. None: stopped while waiting."""
        delay = RETRY_FIRST_S
        while True:
            try:
                outputs = encode_image(self.backend, image)
            except ServiceUnavailable as exc:
                self._encoder_down(str(exc), delay)
                self._release_in_hand()  # not the frame's fault: a restart must not count it
                if self._stop.wait(delay):
                    return None
                delay = min(2 * delay, RETRY_MAX_S)
                if frame is not None:
                    self._take_in_hand(frame, "encode")
                continue
            if self._encoder_down_since is not None:
                down = time.time() - self._encoder_down_since
                self.options.echo(f"zsad: encoder {self.backend.name} is back (down {down:.0f} s)")
                self._encoder_down_since = self._encoder_error = None
                self._status("running")
            return outputs

    def _encoder_down(self, error: str, delay: float) -> None:
        """Note an outage once, and keep status.json current while it lasts."""
        if self._encoder_down_since is None:
            self._encoder_down_since, self._encoder_error = time.time(), error
            self.encoder_outages += 1
            self.options.echo(
                f"zsad: encoder unreachable, the frame waits and is retried (every "
                f"{delay:g} s, up to {RETRY_MAX_S:g} s): {error}"
            )
            self._status("running")
        elif time.monotonic() - self._status_at >= self.options.status_interval_s:
            self._status("running")

    def _flush_held(self) -> None:
        if not self._held:
            return
        start = time.perf_counter()
        try:
            results = self.scorer.flush()
        except ValueError as exc:
            self.options.echo(f"zsad: {len(self._held)} image(s) left unscored: {exc}")
            return
        for note in self.scorer.notes():
            self.options.echo(f"zsad: {note}")
        self._write_results(results, time.perf_counter() - start, {})
        self._release_in_hand()

    def _write_results(
        self, results: list[Scored], score_s: float, images: dict[int, np.ndarray]
    ) -> None:
        for result in results:
            if result.position in self._journaled_warm_up:
                continue  # journaled before the restart; scored again only to rebuild the set
            held = self._held.pop(result.position)
            # A held warm-up frame's overlay is drawn from its file now: it is the one in hand.
            self._take_in_hand(held, "write")
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
            self._append(record)
            self.scored += 1
            self.journal_scored += 1
            self._stamps.append(time.monotonic())
            self._latencies.append(record["timing"]["latency_ms"])
            self._last = {
                "id": self.journal.count - 1,
                **{k: record[k] for k in ("index", "path", "score", "decision", "threshold")},
            }
        self._save_state()

    def _record(self, held: _Held, result: Scored, image: np.ndarray | None) -> dict[str, Any]:
        scored = Result(str(held.path), result.score, result.anomaly_map, self.backend.image_size)
        span = self.scorer.map_range() if self.options.overlays else None
        files = save_result_files(self.out, result.position, scored, image, span)
        threshold = self.options.threshold
        decision = decide(result.score, threshold)
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

    def _append(self, record: dict[str, Any]) -> None:
        self.journal.append(record)
        self.line.context.journal_grew(self.journal.count)

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
        self._append(record)
        self.done.add(item.key)
        self.rejected += 1
        self.journal_rejected += 1
        self._finish_rejection(record)
        self.options.echo(f"zsad: rejected {item.path}: {item.reason}")

    def _finish_rejection(self, record: dict[str, Any]) -> None:
        """Move (hot folder) or copy (path list) a rejected file and write its reason beside it."""
        source = Path(record["path"])
        target = self.out / record["rejected_to"]
        make_folders(target.parent)
        reason = target.with_name(target.name + ".reason.txt")
        if not reason.exists():
            write_text(reason, f"{record['path']}: {record['error']}\n")
        try:
            stat = source.stat()
        except OSError:
            return  # already moved, or gone
        if (stat.st_size, stat.st_mtime_ns) != (record["size"], record["mtime_ns"]):
            return  # a newer file of that name: not the one rejected
        try:
            if self.options.move_rejected:
                move_file(source, target)
            elif not target.exists():
                copy_file(source, target)
        except OSError as exc:
            self.options.echo(f"zsad: could not move {source} to {target}: {exc}")

    # ------------------------------------------------------------------ state and status

    def _watch_source(self) -> None:
        """Say once when the hot folder goes missing and once when it is back."""
        since = getattr(self.source, "missing_since", None)
        if since == self._source_missing_since:
            return
        root = getattr(self.source, "root", "?")
        if since is not None:
            reason = getattr(self.source, "missing_reason", "") or "cannot be listed"
            self.options.echo(
                f"zsad: hot folder {root} is missing ({reason}); waiting for it to come back"
            )
        else:
            gone = time.time() - (self._source_missing_since or time.time())
            self.options.echo(f"zsad: hot folder {root} is back (missing for {gone:.0f} s)")
        self._source_missing_since = since
        self._status("running")

    def _take_threshold_request(self) -> None:
        """Apply a threshold a sink asked for (an operator, with a token) from the next image."""
        request = self.line.context.take_threshold_request()
        if request is None:
            return
        value, source = request
        write_json(self.out / THRESHOLD, {"threshold": value, "source": source, "time": _now_iso()})
        self.options.threshold = value
        self.options.echo(f"zsad: threshold set to {value} by {source}")
        self._status("running")

    def _load_threshold(self) -> None:
        saved = self.out / THRESHOLD
        if not saved.is_file():
            return
        try:
            set_at = json.loads(saved.read_text())
            value = set_at["threshold"]
            value = None if value is None else float(value)
        except (ValueError, KeyError, TypeError) as exc:
            raise ZsadError(f"{saved}: not a threshold file ({exc}); delete it to go on") from exc
        self.options.threshold = value
        self.options.echo(
            f"zsad: threshold {value} from {saved} (set by {set_at.get('source')} at "
            f"{set_at.get('time')}); delete that file to use the bundle's or --threshold"
        )

    def _report_error(self, error: ZsadError) -> None:
        """Tell status.json and the sinks that the station stopped on an error."""
        # The disk that failed may hold status.json too; the sinks hear it before the write.
        with contextlib.suppress(OSError):
            self._status("error", error=str(error))

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
        if state == "running" and self._encoder_down_since is not None:
            state = "encoder-unreachable"
        elif state == "running" and self.scorer.warming_up():
            state = "warming-up"
        status = {
            "state": state,
            "pid": os.getpid(),
            "updated": _now_iso(),
            "status_every_s": self.options.status_interval_s,
            "uptime_s": round(now - self._started, 1),
            "journal": {"scored": self.journal_scored, "rejected": self.journal_rejected},
            "this_run": {"scored": self.scored, "rejected": self.rejected},
            "held_for_warm_up": held,
            "backlog": 0 if self.source is None else self.source.backlog,
            "images_per_s_last_minute": round((len(recent) - 1) / span, 2) if span else 0.0,
            "latency_ms_p50": latencies[len(latencies) // 2] if latencies else None,
            "last": self._last,
            "rss_mb": rss_mb(),
            "backend": self.backend.name,
            "threshold": self.options.threshold,
            "source": "ok" if self._source_missing_since is None else "missing",
            "source_missing_since": _iso(self._source_missing_since),
            "encoder": "ok" if self._encoder_down_since is None else "unreachable",
            "encoder_down_since": _iso(self._encoder_down_since),
            "encoder_error": self._encoder_error,
            "encoder_outages": self.encoder_outages,
            **self.scorer.describe(),
            **extra,
        }
        if self.line.sinks:
            status["sinks"] = self.line.describe()
        self.line.context.publish_status(status)
        write_json(self.out / STATUS, status)
        self._status_at = now
        if state in ("stopped", "error"):
            self._final = status
        else:
            last = self._last or {}
            score = "-" if last.get("score") is None else f"{last['score']:.4g}"
            self.options.echo(
                f"zsad: {state}: {self.scored} scored, {self.rejected} rejected this run "
                f"({self.journal_scored} and {self.journal_rejected} in the journal), backlog "
                f"{status['backlog']}, {status['images_per_s_last_minute']} img/s, last score "
                f"{score} {last.get('decision') or ''}".rstrip()
            )
        return status

    def _show_sinks_stopped(self) -> None:
        """Rewrite the final status with the sinks as they are once stopped."""
        # The final status is written while the sinks still run, so that they deliver it.
        if self._final is None or not self.line.sinks:
            return
        self._final["sinks"] = self.line.describe()
        # The status as the sinks last saw it is already on disk: a failing disk keeps that one.
        with contextlib.suppress(OSError):
            write_json(self.out / STATUS, self._final)

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
