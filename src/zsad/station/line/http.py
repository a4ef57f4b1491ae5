"""The station's HTTP API and operator page: the sink that serves them while the station runs.

Served by uvicorn with a Starlette app (``http_app``, ``http_server``): an established server
brings what a line network needs and a hand-written one gets wrong (a listen backlog, keep-alive,
HEAD, protocol errors answered, connections that cost no thread), and the limits it lacks are
added in ``http_server``.

A client never holds up the station: every route reads the journal through this sink's own
``JournalFeed`` and takes no lock of the station's beyond ``LineContext``'s (a status copy, a
threshold request, a trigger). State changes and triggers need a token (``Authorization:
Bearer``); without one configured the API is read-only.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from zsad.errors import ZsadError
from zsad.station.line.config import HttpConfig
from zsad.station.line.feed import JournalFeed
from zsad.station.line.http_error import HttpError
from zsad.station.line.http_server import HEADER_DEADLINE_S, ServerThread
from zsad.station.line.hub import LineContext, TriggerRefused

STATIC = Path(__file__).parent / "static"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}  # fmt: skip
RECENT_NG = 8  # NG parts the status lists
REFUSAL_LOG_S = 60.0  # at most one line per this long about refused tokens
FILES = {"overlay.png": ("overlay", "image/png"), "map.npy": ("map", "application/octet-stream")}


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


class _Refusals:
    """Says that state changes were refused for want of the token: at most one line a minute,
    with the addresses and how many since the last line, so a guessing client cannot flood the
    log and none goes unmentioned."""

    def __init__(self, echo: Any, every_s: float = REFUSAL_LOG_S) -> None:
        self.echo = echo
        self.every_s = every_s
        self.last = -float("inf")
        self.held: dict[str, int] = {}
        self.lock = threading.Lock()

    def add(self, client: str) -> None:
        """One refused request from ``client``."""
        with self.lock:
            self.held[client] = self.held.get(client, 0) + 1
            if time.monotonic() - self.last >= self.every_s:
                self._say()

    def flush(self) -> None:
        """Say what is held (at stop)."""
        with self.lock:
            if self.held:
                self._say()

    def _say(self) -> None:
        total = sum(self.held.values())
        clients = ", ".join(f"{c} ({n})" for c, n in sorted(self.held.items())[:8])
        more = "" if len(self.held) <= 8 else f" and {len(self.held) - 8} more addresses"
        self.echo(
            f"zsad: http: refused {total} state change(s) without the right token from "
            f"{clients}{more}"
        )
        self.held.clear()
        self.last = time.monotonic()


class HttpSink:
    """Serves ``/api/...`` and the operator page ``/`` while the station runs."""

    name = "http"

    def __init__(
        self,
        config: HttpConfig,
        *,
        keepalive_s: float = 15.0,
        header_deadline_s: float = HEADER_DEADLINE_S,
    ) -> None:
        self.config = config
        self.keepalive_s = keepalive_s
        self.header_deadline_s = header_deadline_s
        self.context: LineContext | None = None
        self.token: str | None = None
        self.url: str | None = None
        self.state = "starting"
        self.stopping = False
        self.status_version = 0
        self.changes: Any = None  # http_app.Changes, once started
        self.slots: Any = None  # http_app.StreamSlots, once started
        self._server: Any = None  # http_server.ServerThread
        self._follower: threading.Thread | None = None
        self._stop = threading.Event()
        self._tally_lock = threading.Lock()
        self._tally = _Tally()
        self._follow_error: str | None = None
        self._query_lock = threading.Lock()
        self._query: JournalFeed | None = None
        self._static: dict[str, tuple[bytes, str]] = {}
        self._refusals: _Refusals | None = None

    # ------------------------------------------------------------------ Sink

    def start(self, context: LineContext) -> None:
        """Listen on the configured address and follow the journal, each on its own thread."""
        try:
            from zsad.station.line import http_app
        except ImportError as exc:
            raise ZsadError(
                f"--http needs starlette and uvicorn: pip install 'zsad[line]' ({exc})"
            ) from exc
        self.context = context
        self.token = self.config.token()
        self._static = _load_static()
        self._refusals = _Refusals(context.echo)
        self.changes, self.slots = http_app.Changes(), http_app.StreamSlots()
        host, port = self.config.bind()
        wildcard = host in ("0.0.0.0", "::", "")
        hosts = http_app.allowed_hosts(host, self.config.allow_hosts, wildcard)
        app = http_app.build_app(self, hosts, wildcard)
        try:
            self._server = ServerThread(app, host, port, header_deadline_s=self.header_deadline_s)
        except OSError as exc:
            raise ZsadError(
                f"--http {self.config.address}: cannot listen there ({exc.strerror or exc})"
            ) from exc
        self._server.start()
        assert self._server.loop is not None
        self.changes.bind(self._server.loop)
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self._server.port}/"
        self._query = JournalFeed(context.journal, keep_offsets=True)
        context.on_status(self._on_status)
        self._follower = threading.Thread(
            target=self._follow, name="zsad-http-journal", daemon=True
        )
        self._follower.start()
        access = "read-only: no token" if self.token is None else "changes need the token"
        context.echo(f"zsad: http: operator page and API at {self.url} ({access})")
        self.state = "serving"

    def describe(self) -> dict[str, Any]:
        """The state, the address, whether state changes are allowed, and the open event streams."""
        return {
            "state": self.state,
            "url": self.url,
            "read_only": self.token is None,
            "streams": 0 if self.slots is None else len(self.slots.open),
            "error": self._follow_error,
        }

    def stop(self, timeout: float) -> None:
        """End the event streams, close the listener and every connection."""
        self.stopping = True
        self._stop.set()
        deadline = time.monotonic() + timeout
        if self.changes is not None:
            self.changes.notify()
        if self._server is not None:
            self._server.stop(max(0.5, deadline - time.monotonic()))
        if self._follower is not None:
            self._follower.join(max(0.0, deadline - time.monotonic()))
        with self._query_lock:
            if self._query is not None:
                self._query.close()
        if self._refusals is not None:
            self._refusals.flush()
        self.state = "stopped"

    # ------------------------------------------------------------------ threads

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
                    with self._tally_lock:
                        for record in records:
                            self._tally.add(record)
                    self.changes.notify()
                else:
                    self.context.wait_for_records(feed.position, 0.25)
        finally:
            feed.close()

    def _on_status(self, _status: dict[str, Any]) -> None:
        """On the station's thread: only wake the event streams."""
        self.status_version += 1
        self.changes.notify()

    # ------------------------------------------------------------------ what routes read

    def overview(self) -> dict[str, Any]:
        """The station's status with the journal's tally (``records``: the next record's id)."""
        assert self.context is not None
        with self._tally_lock:
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

    def authorize(self, authorization: str | None, client: str) -> None:
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
            assert self._refusals is not None
            self._refusals.add(client)
            raise HttpError(
                401,
                "give the station's token as 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": 'Bearer realm="zsad"'},
            )

    def set_threshold(self, value: float | None, client: str) -> None:
        """Ask the station to use ``value`` from its next image (after ``authorize``)."""
        assert self.context is not None
        self.context.request_threshold(value, f"http {client}")

    def trigger(self, part_id: Any) -> str | None:
        """Trigger the camera (after ``authorize``): 400 for a bad part id, 409 when the
        station takes no triggers, 503 while the camera is unreachable."""
        assert self.context is not None
        try:
            return self.context.trigger(part_id)
        except TriggerRefused as exc:
            raise HttpError(503 if exc.busy else 409, str(exc)) from exc
        except ZsadError as exc:
            raise HttpError(400, str(exc)) from exc

    def static(self, name: str) -> tuple[bytes, str]:
        """A file of the operator page (a fixed set, read at start)."""
        if name not in self._static:
            raise HttpError(404, f"nothing at /static/{name[:80]}")
        return self._static[name]


def _load_static() -> dict[str, tuple[bytes, str]]:
    files = {}
    for path in sorted(STATIC.iterdir()):
        if path.suffix in CONTENT_TYPES and path.is_file():
            files[path.name] = (path.read_bytes(), CONTENT_TYPES[path.suffix])
    if "index.html" not in files:
        raise ZsadError(f"{STATIC}: the operator page (index.html) is missing from the install")
    return files
