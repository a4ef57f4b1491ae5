"""The station's HTTP API and operator page, on the standard library's threading HTTP server.

Why the standard library: the station is torch-free and meant to stay light, and what it serves
is small (a status, pages of journal records, PNG files, one event stream per screen). A
``ThreadingHTTPServer`` gives each connection its own thread, needs no event loop beside the
station's and adds no dependency; an ASGI stack would bring a framework and a server for the
same few endpoints.

A client never holds up the station: every handler reads the journal through this sink's own
``JournalFeed`` and takes no lock of the station's beyond ``LineContext``'s (a status copy, a
threshold request). State changes need a token (``Authorization: Bearer``); without one configured
the API is read-only.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections import deque
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from zsad.errors import ZsadError
from zsad.station.line.config import HttpConfig
from zsad.station.line.feed import JournalFeed
from zsad.station.line.http_handler import FILES, HttpError, make_server
from zsad.station.line.hub import LineContext

STATIC = Path(__file__).parent / "static"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}  # fmt: skip
MAX_STREAMS = 32  # open event streams (operator screens) at once
RECENT_NG = 8  # NG parts the status lists


class _Tally:
    """What the whole journal says so far: counts by decision, the latest part, the last NGs."""

    def __init__(self) -> None:
        self.records = 0
        self.counts = {"parts": 0, "ok": 0, "ng": 0, "no_decision": 0, "rejected": 0}
        self.latest: dict[str, Any] | None = None
        self.recent_ng: deque[dict[str, Any]] = deque(maxlen=RECENT_NG)

    def add(self, record: dict[str, Any]) -> None:
        self.records = int(record["id"]) + 1
        decision = record.get("decision")
        if decision == "rejected":
            self.counts["rejected"] += 1
            return
        self.counts["parts"] += 1
        self.counts[{"OK": "ok", "NG": "ng"}.get(decision, "no_decision")] += 1
        self.latest = record
        if decision == "NG":
            self.recent_ng.append(record)

    def view(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "counts": dict(self.counts),
            "latest": self.latest,
            "recent_ng": list(reversed(self.recent_ng)),
        }


class HttpSink:
    """Serves ``/api/...`` and the operator page ``/`` while the station runs."""

    name = "http"

    def __init__(self, config: HttpConfig, *, keepalive_s: float = 15.0) -> None:
        self.config = config
        self.keepalive_s = keepalive_s
        self.context: LineContext | None = None
        self.token: str | None = None
        self.url: str | None = None
        self.streams = 0
        self.state = "starting"
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._changed = threading.Condition()  # the tally grew or a new status came
        self._tally = _Tally()
        self._status_version = 0
        self._follow_error: str | None = None
        self._query_lock = threading.Lock()
        self._query: JournalFeed | None = None
        self._static: dict[str, tuple[bytes, str]] = {}

    # ------------------------------------------------------------------ Sink

    def start(self, context: LineContext) -> None:
        """Listen on the configured address and follow the journal, each on its own thread."""
        self.context = context
        self.token = self.config.token()
        self._static = _load_static()
        host, port = self.config.bind()
        try:
            self._server = make_server(host, port, self)
        except OSError as exc:
            raise ZsadError(
                f"--http {self.config.address}: cannot listen there ({exc.strerror or exc})"
            ) from exc
        bound = self._server.server_address[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{bound}/"
        self._query = JournalFeed(context.journal, keep_offsets=True)
        context.on_status(self._on_status)
        for target, name in ((self._serve, "zsad-http"), (self._follow, "zsad-http-journal")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        access = "read-only: no token" if self.token is None else "changes need the token"
        context.echo(f"zsad: http: operator page and API at {self.url} ({access})")
        self.state = "serving"

    def describe(self) -> dict[str, Any]:
        """The state, the address, whether state changes are allowed, and the open event streams."""
        return {
            "state": self.state,
            "url": self.url,
            "read_only": self.token is None,
            "streams": self.streams,
            "error": self._follow_error,
        }

    def stop(self, timeout: float) -> None:
        """Close the event streams and the listener."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._threads:  # shutdown() waits for serve_forever, so only once it runs
            assert self._server is not None
            self._server.shutdown()
        if self._server is not None:
            self._server.server_close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._query_lock:
            if self._query is not None:
                self._query.close()
        self.state = "stopped"

    # ------------------------------------------------------------------ threads

    def _serve(self) -> None:
        assert self._server is not None
        self._server.serve_forever(poll_interval=0.2)

    def _follow(self) -> None:
        """Keep the tally of the whole journal, waking the event streams on each new record."""
        assert self.context is not None
        feed = JournalFeed(self.context.journal)
        try:
            while not self._stop.is_set():
                try:
                    records = feed.read(512)
                except ZsadError as exc:  # a journal line edited by hand: say so, try again later
                    if self._follow_error != str(exc):
                        self.context.echo(f"zsad: http: {exc}")
                    self._follow_error = str(exc)
                    self._stop.wait(30.0)
                    continue
                if records:
                    with self._changed:
                        for record in records:
                            self._tally.add(record)
                        self._changed.notify_all()
                else:
                    self.context.wait_for_records(feed.position, 0.25)
        finally:
            feed.close()

    def _on_status(self, _status: dict[str, Any]) -> None:
        """On the station's thread: only wake the event streams."""
        with self._changed:
            self._status_version += 1
            self._changed.notify_all()

    # ------------------------------------------------------------------ what handlers read

    def overview(self) -> dict[str, Any]:
        """The station's status with the journal's tally (``records``: the next record's id)."""
        assert self.context is not None
        with self._changed:
            tally = self._tally.view()
        return {"station": self.context.status(), "read_only": self.token is None, **tally}

    def known(self) -> int:
        """How many records the journal holds: the id the next one gets."""
        assert self.context is not None
        return max(self.context.records, self._tally.records)

    def results(self, since: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` journal records from id ``since`` on."""
        assert self._query is not None
        if since >= self.known():
            return []  # past the end: nothing, without reading the journal to its end
        with self._query_lock:
            self._query.seek(since)
            if self._query.position != since:
                return []
            return self._query.read(limit)

    def record(self, record_id: int) -> dict[str, Any]:
        """The record with ``record_id``, or a 404."""
        found = self.results(record_id, 1)
        if not found:
            raise HttpError(404, f"no record {record_id} in the journal")
        return found[0]

    def result_file(self, record_id: int, name: str) -> tuple[bytes, str]:
        """The overlay or map file of a record, read only from inside OUT."""
        assert self.context is not None
        key, content_type = FILES[name]
        relative = self.record(record_id).get(key)
        if not isinstance(relative, str) or not relative:
            raise HttpError(404, f"record {record_id} has no {key}")
        root = self.context.out.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise HttpError(404, f"record {record_id}: its {key} file is not in the results folder")
        return path.read_bytes(), content_type

    def authorize(self, authorization: str | None) -> None:
        """Refuse a state change without the token (403 where none is configured)."""
        if self.token is None:
            raise HttpError(
                403,
                "read-only: the station was started without --http-token-file or "
                "$ZSAD_HTTP_TOKEN, so nothing can be changed over HTTP",
            )
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        ):
            raise HttpError(
                401,
                "give the station's token as 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": 'Bearer realm="zsad"'},
            )

    def set_threshold(self, value: float | None, client: str) -> None:
        """Ask the station to use ``value`` from its next image (after ``authorize``)."""
        assert self.context is not None
        self.context.request_threshold(value, f"http {client}")

    def static(self, path: str) -> tuple[bytes, str]:
        """A file of the operator page (a fixed set, read at start)."""
        name = "index.html" if path == "/" else path.removeprefix("/static/")
        if name not in self._static:
            raise HttpError(404, f"nothing at {path}")
        return self._static[name]

    def stream(self, handler: Any, start: int) -> None:
        """Send results from id ``start`` on as server-sent events, then live ones and each new
        status, with a comment line as keep-alive, until the client or the station goes."""
        assert self.context is not None
        with self._changed:
            if self.streams >= MAX_STREAMS:
                raise HttpError(503, f"too many event streams open (at most {MAX_STREAMS})")
            self.streams += 1
        try:
            handler.begin_stream()
            position, seen_status = start, -1
            last_write = time.monotonic()
            while not self._stop.is_set():
                chunks = []
                for record in self.results(position, 64):
                    position = int(record["id"]) + 1
                    chunks.append(_event(record, "result", position - 1))
                if self._status_version != seen_status:
                    seen_status = self._status_version
                    chunks.append(_event(self.overview(), "status"))
                if not chunks and time.monotonic() - last_write >= self.keepalive_s:
                    chunks.append(b": keep-alive\n\n")
                if chunks:
                    handler.wfile.write(b"".join(chunks))
                    handler.wfile.flush()
                    last_write = time.monotonic()
                    continue
                with self._changed:
                    if self._tally.records <= position and self._status_version == seen_status:
                        wait = self.keepalive_s - (time.monotonic() - last_write)
                        self._changed.wait(max(0.01, wait))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away
        finally:
            with self._changed:
                self.streams -= 1


def _event(payload: dict[str, Any], kind: str, event_id: int | None = None) -> bytes:
    data = json.dumps(payload, separators=(",", ":"))
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {data}\n\n".encode()


def _load_static() -> dict[str, tuple[bytes, str]]:
    files = {}
    for path in sorted(STATIC.iterdir()):
        if path.suffix in CONTENT_TYPES and path.is_file():
            files[path.name] = (path.read_bytes(), CONTENT_TYPES[path.suffix])
    if "index.html" not in files:
        raise ZsadError(f"{STATIC}: the operator page (index.html) is missing from the install")
    return files
