"""The station's HTTP API and operator page as a Starlette app: routes, the JSON refusals, the
Host allow-list, request-body limits and the event streams with their per-client fair share.

Every refusal is a JSON ``{"error": ...}`` with a 4xx/5xx status that says what was wrong. What
the routes read comes from ``HttpSink`` (the journal, the status, the token check).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import math
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from zsad.station.line.http_error import HttpError

MAX_LIMIT = 1000  # records per /api/results page
MAX_ID = 10**18 - 1  # the largest record id a request may name (18 digits)
MAX_BODY = 4096  # bytes of a POST body
MAX_DEPTH = 4  # nesting of a JSON body ({"threshold": x} needs 1)
BODY_DEADLINE_S = 10.0  # to send a whole POST body
MAX_STREAMS = 32  # open event streams (operator screens) at once
RESULT_FILE = re.compile(r"^([0-9]{1,18})(?:/(overlay\.png|map\.npy))?$")
# The operator page loads only its own files; no other site may frame it.
PAGE_POLICY = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
COMMON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def refusal(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON answer of every refusal."""
    return JSONResponse({"error": message}, status, {**COMMON_HEADERS, **(headers or {})})


def _json(payload: Any, status: int = 200) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(body, status, COMMON_HEADERS, media_type="application/json")


# ---------------------------------------------------------------------- Host allow-list


def allowed_hosts(bound: str, extra: Iterable[str], wildcard: bool) -> frozenset[str]:
    """Host names a request may name: the bound address, the loopback names, this machine's
    name on a wildcard bind, and the names given with --http-allow-host."""
    names = {"localhost", "127.0.0.1", "::1", bound.lower().strip("[]")}
    if wildcard:
        names.add(socket.gethostname().lower())
    return frozenset(names | {name.lower().strip("[]") for name in extra})


def _host_name(header: str) -> str:
    """The name in a Host header, without its port ('[::1]:8080' -> '::1')."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """Refuse requests of another HTTP version, or whose Host is not on the allow-list (the guard
    against DNS rebinding).

    On a wildcard bind (0.0.0.0, ::) any IP literal is taken too: a page a browser loaded from
    an IP address is of that address's origin, so no other site's script can read the answer.
    """

    def __init__(self, app: ASGIApp, names: frozenset[str], wildcard: bool) -> None:
        self.app = app
        self.names = names
        self.wildcard = wildcard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("http_version") not in ("1.0", "1.1"):
            version = str(scope.get("http_version"))[:20]
            answer = refusal(505, f"HTTP/{version}: this station speaks HTTP/1.1")
            await answer(scope, receive, send)
            return
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"host")
            if header is not None:  # HTTP/1.0 clients may send none; browsers always do
                name = _host_name(header.decode("latin-1"))
                if name not in self.names and not (self.wildcard and _is_ip(name)):
                    known = ", ".join(sorted(self.names))
                    answer = refusal(
                        421,
                        f"Host {name[:80]!r} is not a name of this station ({known}); "
                        "add it with --http-allow-host",
                    )
                    await answer(scope, receive, send)
                    return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------- request parts


def _whole(text: str | None) -> int | None:
    """A header's whole number (ASCII digits, at most 18 of them), else None."""
    text = (text or "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    values = request.query_params.getlist(name)
    if not values:
        return default
    value = _whole(values[-1])
    if value is None:
        raise HttpError(400, f"{name}={values[-1][:40]!r}: give a whole number")
    if not low <= value <= high:
        raise HttpError(400, f"{name}={value}: give a number from {low} to {high}")
    return value


def json_depth(text: str) -> int:
    """How deeply a JSON text nests arrays and objects (counted before it is parsed)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _json_field(body: bytes, name: str, example: str) -> Any:
    """The value of ``name`` in a JSON body that is one object with that one field."""
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise HttpError(400, f"the body is not JSON ({exc}); send {example}") from exc
    if json_depth(text) > MAX_DEPTH:
        raise HttpError(400, f"the body nests deeper than {MAX_DEPTH}; send {example}")
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise HttpError(400, f"the body is not JSON ({exc}); send {example}") from exc
    if not isinstance(payload, dict) or name not in payload:
        raise HttpError(400, f"send a JSON object {example}")
    extra = sorted(set(payload) - {name})
    if extra:
        raise HttpError(400, f"unknown field(s) {', '.join(extra)[:200]}; send only {name}")
    return payload[name]


def threshold_from(body: bytes) -> float | None:
    """The threshold of a ``{"threshold": x}`` body (a finite number, or null for none)."""
    value = _json_field(body, "threshold", '{"threshold": x}, x a number or null')
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HttpError(400, f"threshold {str(value)[:40]!r}: give a finite number, or null")
    return float(value)


def part_id_from(body: bytes) -> Any:
    """The part id of a ``{"part_id": "..."}`` trigger body (checked by the station)."""
    return _json_field(body, "part_id", '{"part_id": "..."}, a string or null')


async def _body(request: Request) -> bytes:
    """The POST body, at most MAX_BODY bytes, sent within BODY_DEADLINE_S."""
    length = _whole(request.headers.get("content-length"))
    if length is None:
        raise HttpError(411, "send a Content-Length with the JSON body")
    if length > MAX_BODY:
        raise HttpError(413, f"the body is over {MAX_BODY} bytes")

    async def read() -> bytes:
        chunks = bytearray()
        async for chunk in request.stream():
            chunks += chunk
        return bytes(chunks)

    try:
        return await asyncio.wait_for(read(), BODY_DEADLINE_S)
    except asyncio.TimeoutError:
        raise HttpError(408, f"the body did not arrive within {BODY_DEADLINE_S:g} s") from None


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# ---------------------------------------------------------------------- event streams


class Changes:
    """Wakes every waiting event stream when a record or a status comes (from any thread)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the streams wait on."""
        self.loop = loop

    def notify(self) -> None:
        """Something changed: wake the streams (safe from any thread)."""
        if self.loop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed in between: nobody is waiting
                self.loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    def waiter(self) -> asyncio.Event:
        """An event set at the next change (take it before looking, so no change is missed)."""
        if self._event is None:
            self._event = asyncio.Event()
        return self._event


class StreamSlot:
    """One open event stream: its client and whether it was asked to make room."""

    def __init__(self, client: str, opened: float) -> None:
        self.client = client
        self.opened = opened
        self.evicted = False


class StreamSlots:
    """At most ``total`` event streams; when full, a client with fewer streams than another
    takes the oldest stream of the client holding the most, so no client can lock others out."""

    def __init__(self, total: int = MAX_STREAMS) -> None:
        self.total = total
        self.open: list[StreamSlot] = []

    def _count(self, client: str) -> int:
        return sum(slot.client == client for slot in self.open if not slot.evicted)

    def admit(self, client: str) -> tuple[StreamSlot, StreamSlot | None]:
        """A slot for ``client`` and the stream it displaced (None), or HttpError 503."""
        live = [slot for slot in self.open if not slot.evicted]
        evicted = None
        if len(live) >= self.total:
            hog = max({slot.client for slot in live}, key=self._count)
            if self._count(hog) <= self._count(client) + 1:
                raise HttpError(
                    503,
                    f"all {self.total} event streams are taken and this client holds its share",
                    {"Retry-After": "5"},
                )
            evicted = min((slot for slot in live if slot.client == hog), key=lambda s: s.opened)
            evicted.evicted = True
        slot = StreamSlot(client, time.monotonic())
        self.open.append(slot)
        return slot, evicted

    def release(self, slot: StreamSlot) -> None:
        """The stream ended."""
        if slot in self.open:
            self.open.remove(slot)


class _EventStream(StreamingResponse):
    """An event-stream response that gives its slot back however it ends (also unstarted)."""

    def __init__(self, content: AsyncIterator[bytes], slots: StreamSlots, slot: StreamSlot):
        super().__init__(content, media_type="text/event-stream",
                         headers={**COMMON_HEADERS, "X-Accel-Buffering": "no"})  # fmt: skip
        self.slots, self.slot = slots, slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slots.release(self.slot)


def _event(payload: dict[str, Any], kind: str, event_id: int | None = None) -> bytes:
    data = json.dumps(payload, separators=(",", ":"))
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {data}\n\n".encode()


async def _events(sink: HttpSink, slot: StreamSlot, start: int) -> AsyncIterator[bytes]:
    """Results from id ``start`` on, then live ones and each new status, with keep-alives."""
    yield b"retry: 2000\n\n"
    position, seen_status, last_write = start, -1, time.monotonic()
    while not sink.stopping and not slot.evicted:
        changed = sink.changes.waiter()
        records = await run_in_threadpool(sink.results, position, 64)
        chunks = [_event(record, "result", int(record["id"])) for record in records]
        if records:
            position = int(records[-1]["id"]) + 1
        if sink.status_version != seen_status:
            seen_status = sink.status_version
            chunks.append(_event(sink.overview(), "status"))
        if not chunks and time.monotonic() - last_write >= sink.keepalive_s:
            chunks.append(b": keep-alive\n\n")
        if chunks:
            yield b"".join(chunks)
            last_write = time.monotonic()
            continue
        wait = sink.keepalive_s - (time.monotonic() - last_write)
        with contextlib.suppress(asyncio.TimeoutError):  # builtin TimeoutError from 3.11 only
            await asyncio.wait_for(changed.wait(), max(0.01, wait))
    if slot.evicted:
        yield b": another client needed this stream; reconnecting\n\n"


# ---------------------------------------------------------------------- routes


class HttpSink(Protocol):
    """What the routes read from the sink that serves them (``http.HttpSink``)."""

    stopping: bool
    keepalive_s: float
    status_version: int
    changes: Changes
    slots: StreamSlots

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

    def authorize(self, authorization: str | None, client: str) -> None:
        """HttpError 401/403 unless the header carries the token."""

    def set_threshold(self, value: float | None, client: str) -> None:
        """Ask the station for a new threshold."""

    def trigger(self, part_id: Any) -> str | None:
        """Trigger the camera (the part id as taken), or HttpError 400/409/503."""

    def static(self, name: str) -> tuple[bytes, str]:
        """A file of the operator page, or HttpError 404."""


Endpoint = Callable[[Request], Awaitable[Response]]


def _answers(endpoint: Endpoint) -> Endpoint:
    """The endpoint with its refusals and failures answered as JSON (the server serves on)."""

    @functools.wraps(endpoint)
    async def answer(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HttpError as exc:
            return refusal(exc.status, str(exc), exc.headers)
        except Exception as exc:  # an unreadable file, a broken journal: say so, serve on
            return refusal(500, f"{type(exc).__name__}: {exc}")

    return answer


def build_app(sink: HttpSink, hosts: frozenset[str], wildcard: bool) -> Starlette:
    """The API and the page, reading from ``sink``."""

    async def status(request: Request) -> Response:
        return _json(await run_in_threadpool(sink.overview))

    async def results(request: Request) -> Response:
        since = _int_param(request, "since", 0, 0, MAX_ID)
        limit = _int_param(request, "limit", 100, 1, MAX_LIMIT)
        found = await run_in_threadpool(sink.results, since, limit)
        following = int(found[-1]["id"]) + 1 if found else since
        return _json({"results": found, "next": following})

    async def result(request: Request) -> Response:
        match = RESULT_FILE.match(request.path_params["rest"])
        if match is None:
            raise HttpError(404, f"no endpoint {request.url.path[:80]}")
        record_id = int(match.group(1))
        if match.group(2) is None:
            return _json(await run_in_threadpool(sink.record, record_id))
        data, content_type = await run_in_threadpool(sink.result_file, record_id, match.group(2))
        return Response(data, 200, COMMON_HEADERS, media_type=content_type)

    async def events(request: Request) -> Response:
        last = request.headers.get("last-event-id")
        if last is not None:
            last_id = _whole(last)
            if last_id is None:
                raise HttpError(400, f"Last-Event-ID {last[:40]!r}: give a record id")
            start = last_id + 1
        else:
            start = _int_param(request, "since", sink.known(), 0, MAX_ID)
        if request.method == "HEAD":
            return Response(None, 200, COMMON_HEADERS, media_type="text/event-stream")
        slot, evicted = sink.slots.admit(_client(request))
        if evicted is not None:
            sink.changes.notify()
        # An id past the end is from another journal (OUT was replaced): go on from its end.
        stream = _events(sink, slot, min(start, sink.known()))
        return _EventStream(stream, sink.slots, slot)

    async def threshold(request: Request) -> Response:
        # The token is checked before the body is read: no work for a caller without one.
        sink.authorize(request.headers.get("authorization"), _client(request))
        value = threshold_from(await _body(request))
        sink.set_threshold(value, _client(request))
        return _json({"threshold": value, "applies": "from the next image"}, 202)

    async def trigger(request: Request) -> Response:
        sink.authorize(request.headers.get("authorization"), _client(request))
        part_id = await run_in_threadpool(sink.trigger, part_id_from(await _body(request)))
        return _json({"part_id": part_id, "accepted": True}, 202)

    async def page(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        data, content_type = sink.static(name)
        headers = dict(COMMON_HEADERS)
        if content_type.startswith("text/html"):
            headers["Content-Security-Policy"] = PAGE_POLICY
        return Response(data, 200, headers, media_type=content_type)

    async def not_found(request: Request) -> Response:
        raise HttpError(404, f"no endpoint {request.url.path[:80]}")

    async def on_starlette_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "GET")
            message = f"{request.method} is not taken here; use {allowed}"
            return refusal(405, message, {"Allow": allowed})
        return refusal(exc.status_code, str(exc.detail))

    reading = ["GET", "HEAD"]
    routes = [
        Route("/", _answers(page), methods=reading),
        Route("/static/{name}", _answers(page), methods=reading),
        Route("/api/status", _answers(status), methods=reading),
        Route("/api/results", _answers(results), methods=reading),
        Route("/api/results/{rest:path}", _answers(result), methods=reading),
        Route("/api/events", _answers(events), methods=reading),
        Route("/api/threshold", _answers(threshold), methods=["POST"]),
        Route("/api/trigger", _answers(trigger), methods=["POST"]),
        Route("/{rest:path}", _answers(not_found), methods=reading),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(HostCheck, names=hosts, wildcard=wildcard)],
        exception_handlers={HTTPException: on_starlette_error},
    )
