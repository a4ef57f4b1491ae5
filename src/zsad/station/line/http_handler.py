"""One HTTP request to the station: read, routed to the sink, answered; every refusal a JSON
``{"error": ...}`` with a 4xx status that says what was wrong."""

from __future__ import annotations

import json
import math
import re
import socket
import socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

MAX_LIMIT = 1000  # records per /api/results page
MAX_ID = 10**18 - 1  # the largest record id a request may name (18 digits)
MAX_BODY = 4096  # bytes of a POST body
RESULT_FILE = re.compile(r"^/api/results/([0-9]{1,18})(?:/(overlay\.png|map\.npy))?$")
FILES = {"overlay.png": ("overlay", "image/png"), "map.npy": ("map", "application/octet-stream")}
# The operator page loads only its own files; no other site may frame it.
PAGE_POLICY = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


class HttpError(Exception):
    """A request the API refuses: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class Api(Protocol):
    """What the requests ask of the sink (``HttpSink``)."""

    def overview(self) -> dict[str, Any]:
        """The status with the journal's tally."""

    def known(self) -> int:
        """The id the next record gets."""

    def results(self, since: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` records from id ``since`` on."""

    def record(self, record_id: int) -> dict[str, Any]:
        """One record, or HttpError 404."""

    def result_file(self, record_id: int, name: str) -> tuple[bytes, str]:
        """A record's overlay or map (bytes, content type), or HttpError 404."""

    def authorize(self, authorization: str | None) -> None:
        """HttpError 401/403 unless the header carries the token."""

    def set_threshold(self, value: float | None, client: str) -> None:
        """Ask the station for a new threshold."""

    def static(self, path: str) -> tuple[bytes, str]:
        """A file of the operator page, or HttpError 404."""

    def stream(self, handler: Any, start: int) -> None:
        """Serve the event stream from record ``start`` on until either side goes."""


def make_server(host: str, port: int, api: Api) -> ThreadingHTTPServer:
    """A server bound to exactly (host, port) whose requests go to ``api``."""
    server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
    server.api = api
    return server


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
    api: Api

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host up in DNS (getfqdn), which can hang offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Server6(_Server):
    address_family = socket.AF_INET6


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
        api = self.server.api
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query, keep_blank_values=True)
        if path == "/api/status":
            return _json(200, api.overview())
        if path == "/api/results":
            since = _int_param(query, "since", 0, 0, MAX_ID)
            limit = _int_param(query, "limit", 100, 1, MAX_LIMIT)
            results = api.results(since, limit)
            following = int(results[-1]["id"]) + 1 if results else since
            return _json(200, {"results": results, "next": following})
        if path == "/api/events":
            self._stream(api, query)
            return None
        if path == "/api/threshold":
            raise HttpError(405, "POST a new threshold here", {"Allow": "POST"})
        match = RESULT_FILE.match(path)
        if match:
            record_id = int(match.group(1))
            if match.group(2) is None:
                return _json(200, api.record(record_id))
            return (200, *api.result_file(record_id, match.group(2)))
        if path.startswith("/api/"):
            raise HttpError(404, f"no endpoint {path[:80]}")
        return (200, *api.static(path))

    def _post(self) -> tuple[int, bytes, str]:
        if urlsplit(self.path).path != "/api/threshold":
            raise HttpError(405, "only /api/threshold takes a POST", {"Allow": "GET"})
        api = self.server.api
        # The token is checked before the body is read: no work for a caller without one.
        api.authorize(self.headers.get("Authorization"))
        length = _whole(self.headers.get("Content-Length"))
        if length is None:
            raise HttpError(411, "send a Content-Length with the JSON body")
        if length > MAX_BODY:
            raise HttpError(413, f"the body is over {MAX_BODY} bytes")
        value = _threshold_from(self.rfile.read(length))
        api.set_threshold(value, self.client_address[0])
        return _json(202, {"threshold": value, "applies": "from the next image"})

    def _stream(self, api: Api, query: dict[str, list[str]]) -> None:
        last = self.headers.get("Last-Event-ID")
        if last is not None:
            last_id = _whole(last)
            if last_id is None:
                raise HttpError(400, f"Last-Event-ID {last[:40]!r}: give a record id")
            start = last_id + 1
        else:
            start = _int_param(query, "since", api.known(), 0, MAX_ID)
        # An id past the end is from another journal (OUT was replaced): go on from its end.
        api.stream(self, min(start, api.known()))

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
        except Exception as exc:  # an unreadable file, a broken journal: say so, serve on
            self._send(*_json(500, {"error": f"{type(exc).__name__}: {exc}"}))
            return
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
            if content_type.startswith("text/html"):
                self.send_header("Content-Security-Policy", PAGE_POLICY)
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
