"""The station's HTTP API and operator page, on the standard library's threading HTTP server.

Why the standard library: the station is torch-free and meant to stay light, and what it serves
is small (a status, pages of journal records, PNG files, one event stream per screen). A
``ThreadingHTTPServer`` gives each connection its own thread, needs no event loop beside the
station's and adds no dependency; an ASGI stack would bring a framework and a server for the
same few endpoints.

The station is never slowed by a client: every handler reads the journal through this sink's own
``JournalFeed`` and takes no lock of the station's beyond ``LineContext``'s (a status copy, a
threshold request). State changes need a token (``Authorization: Bearer``); without one configured
the API is read-only.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import socket
import socketserver
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from zsad.errors import ZsadError
from zsad.station.line.feed import JournalFeed
from zsad.station.line.hub import LineContext

STATIC = Path(__file__).parent / "static"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}  # fmt: skip
MAX_LIMIT = 1000  # records per /api/results page
MAX_ID = 10**18 - 1  # the largest record id a request may name (18 digits)
MAX_BODY = 4096  # bytes of a POST body
MAX_STREAMS = 32  # open event streams (operator screens) at once
RECENT_NG = 8  # NG parts the status lists
RESULT_FILE = re.compile(r"^/api/results/([0-9]{1,18})(?:/(overlay\.png|map\.npy))?$")
FILES = {"overlay.png": ("overlay", "image/png"), "map.npy": ("map", "application/octet-stream")}


class HttpSettings(Protocol):
    """What the sink needs of its ``HttpConfig`` (zsad.station.line.config, which imports this
    module lazily to build the sink, so this module may not import it back)."""

    address: str

    def bind(self) -> tuple[str, int]:
        """(host, port) to listen on."""

    def token(self) -> str | None:
        """The token state changes need, or None (read-only)."""


class HttpError(Exception):
    """A request the API refuses: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


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

    def __init__(self, config: HttpSettings, *, keepalive_s: float = 15.0) -> None:
        self.config = config
        self.keepalive_s = keepalive_s
        self.context: LineContext | None = None
        self.token: str | None = None
        self.url: str | None = None
        self.streams = 0
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._changed = threading.Condition()  # the tally grew or a new status came
        self._tally = _Tally()
        self._status_version = 0
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
            self._server = _server_for(host)((host, port), _Handler)
        except OSError as exc:
            raise ZsadError(
                f"--http {self.config.address}: cannot listen there ({exc.strerror or exc})"
            ) from exc
        self._server.sink = self
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

    def describe(self) -> dict[str, Any]:
        """The address, whether state changes are allowed, and the open event streams."""
        return {"url": self.url, "read_only": self.token is None, "streams": self.streams}

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
                records = feed.read(512)
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

    def set_threshold(self, body: bytes, client: str) -> float | None:
        """Parse ``{"threshold": x}`` (after ``authorize``) and ask the station to use it."""
        assert self.context is not None
        value = _threshold_from(body)
        self.context.request_threshold(value, f"http {client}")
        return value

    def static(self, path: str) -> tuple[bytes, str]:
        """A file of the operator page (a fixed set, read at start)."""
        name = "index.html" if path == "/" else path.removeprefix("/static/")
        if name not in self._static:
            raise HttpError(404, f"nothing at {path}")
        return self._static[name]

    def stream(self, handler: _Handler, start: int) -> None:
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


def _threshold_from(body: bytes) -> float | None:
    """The threshold of a ``{"threshold": x}`` body (a finite number, or null for none)."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f'the body is not JSON ({exc}); send {{"threshold": 0.5}}') from exc
    if not isinstance(payload, dict) or "threshold" not in payload:
        raise HttpError(400, 'send a JSON object {"threshold": x}, x a number or null')
    extra = sorted(set(payload) - {"threshold"})
    if extra:
        raise HttpError(400, f"unknown field(s) {', '.join(extra)}; send only threshold")
    value = payload["threshold"]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HttpError(400, f"threshold {value!r}: give a finite number, or null for none")
    return float(value)


def _load_static() -> dict[str, tuple[bytes, str]]:
    files = {}
    for path in sorted(STATIC.iterdir()):
        if path.suffix in CONTENT_TYPES and path.is_file():
            files[path.name] = (path.read_bytes(), CONTENT_TYPES[path.suffix])
    if "index.html" not in files:
        raise ZsadError(f"{STATIC}: the operator page (index.html) is missing from the install")
    return files


def _whole(text: str | None) -> int | None:
    """A header's whole number (ASCII digits, at most 18 of them), else None."""
    text = (text or "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def _int_param(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise HttpError(400, f"{name}={values[-1][:40]!r}: give a whole number") from None
    if not low <= value <= high:
        raise HttpError(400, f"{name}={value}: give a number from {low} to {high}")
    return value


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # an open event stream never holds up the station's exit
    block_on_close = False
    sink: HttpSink

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host up in DNS (getfqdn), which can hang offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Server6(_Server):
    address_family = socket.AF_INET6


def _server_for(host: str) -> type[_Server]:
    return _Server6 if ":" in host else _Server


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "zsad"
    sys_version = ""
    default_request_version = "HTTP/1.0"  # so even a garbled request line gets a status line
    timeout = 20  # a client that stops reading or writing is dropped, not waited on

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        self._answer(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._answer(self._post)

    def _get(self) -> tuple[int, bytes, str] | None:
        sink = self.server.sink
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query, keep_blank_values=True)
        if path == "/api/status":
            return _json(200, sink.overview())
        if path == "/api/results":
            since = _int_param(query, "since", 0, 0, MAX_ID)
            limit = _int_param(query, "limit", 100, 1, MAX_LIMIT)
            results = sink.results(since, limit)
            following = int(results[-1]["id"]) + 1 if results else since
            return _json(200, {"results": results, "next": following})
        if path == "/api/events":
            self._stream(sink, query)
            return None
        if path == "/api/threshold":
            raise HttpError(405, "POST a new threshold here", {"Allow": "POST"})
        match = RESULT_FILE.match(path)
        if match:
            record_id = int(match.group(1))
            if match.group(2) is None:
                return _json(200, sink.record(record_id))
            return (200, *sink.result_file(record_id, match.group(2)))
        if path.startswith("/api/"):
            raise HttpError(404, f"no endpoint {path[:80]}")
        return (200, *sink.static(path))

    def _post(self) -> tuple[int, bytes, str]:
        if urlsplit(self.path).path != "/api/threshold":
            raise HttpError(405, "only /api/threshold takes a POST", {"Allow": "GET, HEAD"})
        sink = self.server.sink
        # The token is checked before the body is read: no work for a caller without one.
        sink.authorize(self.headers.get("Authorization"))
        length = _whole(self.headers.get("Content-Length"))
        if length is None:
            raise HttpError(411, "send a Content-Length with the JSON body")
        if length > MAX_BODY:
            raise HttpError(413, f"the body is over {MAX_BODY} bytes")
        body = self.rfile.read(length)
        value = sink.set_threshold(body, self.client_address[0])
        return _json(202, {"threshold": value, "applies": "from the next image"})

    def _stream(self, sink: HttpSink, query: dict[str, list[str]]) -> None:
        last = self.headers.get("Last-Event-ID")
        if last is not None:
            last_id = _whole(last)
            if last_id is None:
                raise HttpError(400, f"Last-Event-ID {last[:40]!r}: give a record id")
            start = last_id + 1
        else:
            start = _int_param(query, "since", sink.known(), 0, MAX_ID)
        # An id past the end is from another journal (OUT was replaced): go on from its end.
        sink.stream(self, min(start, sink.known()))

    def begin_stream(self) -> None:
        """Headers of an event stream (the body runs until the connection closes)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        self.wfile.write(b"retry: 2000\n\n")
        self.wfile.flush()

    def _answer(self, route: Any) -> None:
        try:
            answer = route()
        except HttpError as exc:
            self._send(*_json(exc.status, {"error": str(exc)}), exc.headers)
            return
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return  # the client went away
        if answer is not None:
            self._send(*answer)

    def _send(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (a malformed request line, an unknown method) as
        JSON, like every other error of the API."""
        self.close_connection = True
        text = message or self.responses.get(code, ("error",))[0]
        self._send(code, json.dumps({"error": text}).encode(), "application/json")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: the station's log is for the station."""


def _json(status: int, payload: Any) -> tuple[int, bytes, str]:
    data = json.dumps(payload, separators=(",", ":"))
    return status, data.encode(), "application/json"
