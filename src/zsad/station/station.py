"""A factory station: score images one by one as they arrive, and never lose or repeat a result.

Per image: decode (in the source), then the API's Stream encodes and scores it; the station
writes the map and overlay atomically, then one line in the journal (results.jsonl, schema in
docs/records.md). The journal is the only truth on restart: what it lists is done, everything
else is offered again. A restart also puts the last K scored images back in
the STAPS bank (re-encoded from their files) and reloads the BGMPS weights from
``station-state.json``, so scoring carries on as if it had not stopped.

SIGINT/SIGTERM finish the current image and exit cleanly; a second signal stops at once (the
journal is still consistent). ``status.json`` is rewritten every few seconds for operators.

A frame can kill the process (the kernel's OOM killer, a crash in a decoder); restarted by a
service manager, the station would meet it first again, forever: see zsad.station.poison.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zsad.api.records import safe_stem, save_result_files
from zsad.api.results import REJECTED as REJECTED_DECISION
from zsad.api.results import Result, now_iso
from zsad.api.stream import Stream
from zsad.data.images import ImageLoadError, load_image_bounded
from zsad.errors import ServiceUnavailable, ZsadError, echo_stderr
from zsad.formats.atomic import copy_file, make_folders, move_file, write_json, write_text
from zsad.runtime.preprocess import decode_side
from zsad.station.frames import FileVersion, Frame, FrameKey, Rejection, Unanswered
from zsad.station.journal import Journal
from zsad.station.line.hub import LineContext, LineHub, Sink
from zsad.station.poison import POISON_REASON, PoisonGuard
from zsad.station.status import STATUS, StatusReport, iso_time

RESULTS = "results.jsonl"
STATE = "station-state.json"
REJECTED = "rejected"
THRESHOLD = "threshold.json"  # a threshold set while running (HTTP API); it outlives restarts
# A remote encoder that is down is retried after 0.5 s, 1 s, 2 s ... at most this often.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0


@dataclass
class StationOptions:
    """How the station writes and paces itself."""

    out: Path
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
    part_id: str | None = None


class Station:
    """Runs a source of frames through a Stream into OUT (its threshold is the stream's)."""

    def __init__(
        self,
        stream: Stream,
        source_factory: Callable[[set[FrameKey]], Any],
        options: StationOptions,
    ) -> None:
        self.stream = stream
        self.scorer = stream.scorer
        self.backend_name = stream.detector.backend.name
        self.source_factory = source_factory
        self.options = options
        self.out = options.out
        self._stop = threading.Event()
        self._blocking = False
        self._held: dict[int, _Held] = {}
        # Warm-up images journaled before a restart and held again: scored with the set, not
        # journaled twice.
        self._journaled_warm_up: set[int] = set()
        self.report = StatusReport()
        self.guard = PoisonGuard(self.out, options.echo)
        self._final: dict[str, Any] | None = None  # the stopped (or error) status, once written
        self._state_written: dict[str, Any] | None = None
        self.source: Any = None
        self._source_missing_since: float | None = None
        self._frames: Any = None  # the source, when it keeps frames (a camera)
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
            self.guard.count_death()
            self.line.start()
            return self._run()
        except OSError as exc:
            # Not the frame's fault: a restart must not count it against the frame in hand.
            self.guard.release(quiet=True)
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
            self.source.on_decode = self.guard.take
        # A camera keeps its frames under OUT/frames and files each once its record is written.
        self._frames = self.source if hasattr(self.source, "link") else None
        self.line.context.serve_triggers(getattr(self.source, "trigger", None))
        self._status("running")
        handlers = self._install_signals()
        stopped_by = "input exhausted"
        try:
            stopped_by = self._loop()
        except _Stop:
            self.guard.release()
            stopped_by = "signal"
        except KeyboardInterrupt:
            if self._stop.is_set():
                self.guard.release()  # a second signal: the operator's stop, not a death
            raise
        finally:
            self._restore_signals(handlers)
        # Before the journal closes: every trigger taken gets a record, even one the stop cut off.
        for item in getattr(self.source, "stop_triggers", list)():
            self._reject_trigger(item)
        if stopped_by != "signal":
            self._flush_held()
        summary = self._status("stopped", stopped_by=stopped_by)
        self.options.echo(
            f"zsad: stopped ({stopped_by}): {self.report.scored} scored, {self.report.rejected} "
            f"rejected this run; {self.report.journal_scored} scored, "
            f"{self.report.journal_rejected} rejected in "
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
            notices = getattr(self.source, "notices", list)()
            for line in notices:
                self.options.echo(f"zsad: {line}")
            if notices and hasattr(self.source, "describe"):
                self._status("running")  # a camera lost or back: the status says so at once
            self._take_threshold_request()
            now = time.monotonic()
            if self.report.due(self.options.status_interval_s):
                self._status("running")
            if item is None:
                if self.source.exhausted:
                    return "input exhausted"
                idle_exit = self.options.idle_exit_s
                if idle_exit is not None and now - idle_since >= idle_exit:
                    return f"idle for {idle_exit:g} s"
                if not getattr(self.source, "waits", False):
                    self._stop.wait(self.options.poll_s)
                continue
            if isinstance(item, Rejection):
                self._reject(item)
            elif isinstance(item, Unanswered):
                self._reject_trigger(item)
            else:
                self._process(item)
            # Idle is time with nothing to do: a frame that took longer than idle_exit_s to
            # score does not end the run the moment it is done.
            idle_since = time.monotonic()
        return "signal"

    # ------------------------------------------------------------------ resume

    def _resume(self) -> set[FrameKey]:
        done: set[FrameKey] = set()
        recent: deque[dict[str, Any]] = deque(maxlen=max(self.scorer.restore_count, 1))
        warm_up: list[dict[str, Any]] = []
        next_position = 0
        for record in self.journal.records():
            done.add((record["name"], record["size"], record["mtime_ns"]))
            if record["index"] is not None:
                self.report.journal_scored += 1
                next_position = max(next_position, int(record["index"]) + 1)
                recent.append(record)
                if record["phase"] == "warm-up":
                    warm_up.append(record)
            elif record["decision"] == REJECTED_DECISION:
                self.report.journal_rejected += 1
                if record["rejected_to"] is not None:  # a file, not a trigger given up
                    self._finish_rejection(record)
        self.stream.next_index = next_position
        state_file = self.out / STATE
        if state_file.is_file():
            self._state_written = json.loads(state_file.read_text())
            self.scorer.load_state(self._state_written)
        if not self.scorer.restore_count or not recent:
            return done
        # The overlay range is saved once every warm-up record is written: without it, the last
        # run died while writing them, and only the whole set scored again gives a clean run's
        # scores and range.
        if self.scorer.map_range() is None and len(warm_up) == self.report.journal_scored:
            self._hold_warm_up_again(warm_up)
        else:
            self._restore_bank(list(recent))
        return done

    def _image_path(self, record: dict[str, Any]) -> Path:
        """Where a journaled image is read back: a camera frame from where it is kept."""
        return self.out / record["frame"] if record["frame"] else Path(record["path"])

    def _on_disk(self, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
        """The records whose image is still there, and a note on those that are not."""
        # Camera frames --keep-frames did not keep, or hot-folder files moved away: expected, so
        # counted in one note rather than a line each.
        present = [r for r in records if self._image_path(r).is_file()]
        gone = len(records) - len(present)
        note = f" ({gone} no longer on disk: frames not kept, or files moved away)" if gone else ""
        return present, note

    def _reencode(
        self, records: list[dict[str, Any]], what: str
    ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Each journaled image that still decodes, with its encoder outputs, in order."""
        for record in records:
            path = self._image_path(record)
            try:
                image = load_image_bounded(path, self._decode_side)
            except ImageLoadError as exc:
                self.options.echo(f"zsad: {what}: skipped {exc}")
                continue
            outputs = self._encode(image, None)
            if outputs is None:
                return  # stopped while the encoder was down; the loop sees the stop
            yield record, outputs

    def _restore_bank(self, records: list[dict[str, Any]]) -> None:
        restored = 0
        present, note = self._on_disk(records)
        for record, outputs in self._reencode(present, "bank"):
            self.stream.restore(
                outputs, int(record["index"]), float(record["raw_score"]), float(record["score"])
            )
            restored += 1
        self.options.echo(
            f"zsad: resumed at image {self.stream.next_index}; bank refilled with {restored} of "
            f"the last {len(records)} scored images{note}"
        )

    def _hold_warm_up_again(self, records: list[dict[str, Any]]) -> None:
        """Hold the warm-up images journaled before the restart again, in arrival order."""
        held = 0
        present, note = self._on_disk(records)
        for record, outputs in self._reencode(present, "warm-up"):
            position = int(record["index"])
            self._journaled_warm_up.add(position)
            held += 1
            # The last run may have journaled the whole set: then it is scored here.
            self._write_results(self.stream.score(outputs, record["path"], index=position), 0.0, {})
        self.options.echo(
            f"zsad: resumed at image {self.stream.next_index} during warm-up (the last run stopped "
            f"before the overlay range was saved); {held} of {len(records)} journaled warm-up "
            f"images held again{note}, to be scored with the rest of the set"
        )

    @property
    def _decode_side(self) -> int:
        return decode_side(self.stream.detector.image_size)

    # ------------------------------------------------------------------ per frame

    def _reject_poison(self) -> None:
        """Reject the frame a dead run had in hand if it has died in its own work often enough."""
        frame = self.guard.poisoned(self.done)
        if frame is not None:
            self._reject(Rejection(frame.path, *frame.key, POISON_REASON))
            self.guard.release()

    # ------------------------------------------------------------------ per frame

    def _process(self, frame: Frame) -> None:
        # Never offered again in this run, even while held for warm-up; the journal alone
        # decides what a restart skips.
        self.done.add(frame.key)
        self.guard.take(frame, "encode")
        start = time.perf_counter()
        outputs = self._encode(frame.image, frame)
        if outputs is None:
            return  # stopped while the encoder was down: not journaled, so offered again
        encoded = time.perf_counter()
        self._held[self.stream.next_index] = _Held(
            frame.path,
            frame.name,
            frame.size,
            frame.mtime_ns,
            frame.seen_at,
            frame.decode_s,
            encoded - start,
            frame.part_id,
        )
        self.guard.take(frame, "score")
        position = self.stream.next_index
        results = self.stream.score(outputs, str(frame.path))
        score_s = time.perf_counter() - encoded
        self._say_notes()
        self._write_results(results, score_s, {position: frame.image})
        self.guard.release()

    def _encode(self, image: np.ndarray, frame: Frame | None) -> dict[str, np.ndarray] | None:
        """Encode one image; while a remote encoder is down, retry with backoff (the frame
        waits, nothing is lost) and report the outage. None: stopped while waiting."""
        delay = RETRY_FIRST_S
        while True:
            try:
                outputs = self.stream.encode(image)
            except ServiceUnavailable as exc:
                self._encoder_down(str(exc), delay)
                self.guard.release()  # not the frame's fault: a restart must not count it
                if self._stop.wait(delay):
                    return None
                delay = min(2 * delay, RETRY_MAX_S)
                if frame is not None:
                    self.guard.take(frame, "encode")
                continue
            if self._encoder_down_since is not None:
                down = time.time() - self._encoder_down_since
                self.options.echo(f"zsad: encoder {self.backend_name} is back (down {down:.0f} s)")
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
        elif self.report.due(self.options.status_interval_s):
            self._status("running")

    def _flush_held(self) -> None:
        if not self._held:
            return
        start = time.perf_counter()
        try:
            results = self.stream.flush()
        except ZsadError as exc:
            self.options.echo(f"zsad: {len(self._held)} image(s) left unscored: {exc}")
            return
        self._say_notes()
        self._write_results(results, time.perf_counter() - start, {})
        self.guard.release()

    def _say_notes(self) -> None:
        for note in self.stream.take_notes():
            self.options.echo(f"zsad: {note}")

    def _write_results(
        self, results: list[Result], score_s: float, images: dict[int, np.ndarray]
    ) -> None:
        for result in results:
            position = result.index
            assert position is not None
            if position in self._journaled_warm_up:
                continue  # journaled before the restart; scored again only to rebuild the set
            held = self._held.pop(position)
            # A held warm-up frame's overlay is drawn from its file now: it is the one in hand.
            self.guard.take(held, "write")
            start = time.perf_counter()
            span = self.scorer.map_range() if self.options.overlays else None
            files = save_result_files(self.out, position, result, images.get(position), span)
            timing = {
                "decode_ms": round(held.decode_s * 1e3, 2),
                "encode_ms": round(held.encode_s * 1e3, 2),
                "score_ms": round(score_s * 1e3, 2),
                "write_ms": round((time.perf_counter() - start) * 1e3, 2),
                "latency_ms": round((time.monotonic() - held.seen_at) * 1e3, 1),
            }
            link = None if self._frames is None else self._frames.link(held, result.decision)
            record = result.to_record(
                **files, file=held, timing=timing, part_id=held.part_id, frame=link
            )
            self._append(record)
            if self._frames is not None:
                self._frames.file(held, link)
            self.report.note_scored(record, self.journal.count - 1)
        self._save_state()

    def _append(self, record: dict[str, Any]) -> None:
        self.journal.append(record)
        self.line.context.journal_grew(self.journal.count)

    # ------------------------------------------------------------------ rejections

    def _reject(self, item: Rejection) -> None:
        # Milliseconds since the epoch: unique across restarts, and sorts by time.
        stem = safe_stem(int(time.time() * 1000), Path(item.name))
        target = self.out / REJECTED / (stem + Path(item.name).suffix)
        rejected = Result(str(item.path), None, decision=REJECTED_DECISION, error=item.reason)
        record = rejected.to_record(file=item, rejected_to=str(target.relative_to(self.out)))
        # Journal first: a kill before the move leaves a record, and the restart finishes it.
        self._append(record)
        self.done.add(item.key)
        self.report.note_rejected()
        self._finish_rejection(record)
        self.options.echo(f"zsad: rejected {item.path}: {item.reason}")

    def _reject_trigger(self, item: Unanswered) -> None:
        """Journal a trigger no frame answered, so the PLC sees a result for its part id."""
        result = Result(None, None, decision=REJECTED_DECISION, error=item.reason)
        self._append(result.to_record(part_id=item.part_id))
        self.report.note_rejected()
        part = "without a part id" if item.part_id is None else f"for part {item.part_id}"
        self.options.echo(f"zsad: trigger {part} not answered: {item.reason}")

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
        write_json(self.out / THRESHOLD, {"threshold": value, "source": source, "time": now_iso()})
        self.stream.threshold = value
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
        self.stream.threshold = value
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
        camera = getattr(self.source, "describe", dict)()
        if state == "running" and self._encoder_down_since is not None:
            state = "encoder-unreachable"
        elif state == "running" and camera.get("camera") == "unreachable":
            state = "camera-unreachable"
        elif state == "running" and self.scorer.warming_up():
            state = "warming-up"
        status = self.report.build(
            state,
            {
                "status_every_s": self.options.status_interval_s,
                "held_for_warm_up": self.scorer.held(),
                "backlog": 0 if self.source is None else self.source.backlog,
                "backend": self.backend_name,
                "threshold": self.stream.threshold,
                "source": "ok" if self._source_missing_since is None else "missing",
                "source_missing_since": iso_time(self._source_missing_since),
                "encoder": "ok" if self._encoder_down_since is None else "unreachable",
                "encoder_down_since": iso_time(self._encoder_down_since),
                "encoder_error": self._encoder_error,
                "encoder_outages": self.encoder_outages,
                **self.scorer.describe(),
                **camera,
                **extra,
            },
        )
        if self.line.sinks:
            status["sinks"] = self.line.describe()
        self.line.context.publish_status(status)
        write_json(self.out / STATUS, status)
        if state in ("stopped", "error"):
            self._final = status
        else:
            self.options.echo(self.report.line(status))
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
