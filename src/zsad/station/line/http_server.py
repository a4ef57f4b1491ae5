"""uvicorn serving the station's ASGI app on its own thread, with the limits a line network needs.

uvicorn's own settings give the listen backlog and the idle keep-alive timeout; what it lacks is
added here, in a subclass of its h11 protocol: a deadline and a size limit for a whole request head
(a client that trickles a header byte by byte is cut off, however often it sends), a cap on open
connections, in all and per client address, so that one client cannot take every connection of
the station, and JSON refusals for bytes that are not HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections import Counter
from typing import Any

from zsad.errors import ZsadError

BACKLOG = 128  # connections the kernel queues before the server accepts them
MAX_HEAD_BYTES = 32 * 1024  # request line and headers
HEADER_DEADLINE_S = 10.0  # from a request's first byte (or the connection) to its last header
LINGER_S = 1.0  # a refused connection is read (and dropped) this long before it is closed
KEEP_ALIVE_S = 5  # an idle kept-alive connection is closed after this
MAX_CONNECTIONS = 128  # open connections at once, from all clients
MAX_PER_CLIENT = 16  # open connections at once from one client address


class ConnectionGuard:
    """Counts open connections per client address and refuses those over either cap."""

    def __init__(self, total: int = MAX_CONNECTIONS, per_client: int = MAX_PER_CLIENT) -> None:
        self.total = total
        self.per_client = per_client
        self.open: Counter[str] = Counter()

    def admit(self, client: str) -> str | None:
        """Count a new connection from ``client``; or the reason it is refused (not counted)."""
        if sum(self.open.values()) >= self.total:
            return f"the station serves at most {self.total} connections at once"
        if self.open[client] >= self.per_client:
            return f"at most {self.per_client} connections at once from one client address"
        self.open[client] += 1
        return None

    def release(self, client: str) -> None:
        """A connection counted by ``admit`` closed."""
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]


def _refusal(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP response, written before (or instead of) the protocol's own."""
    body = json.dumps({"error": message}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def _protocol(guard: ConnectionGuard, header_deadline_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with the connection caps and the request-head deadline."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Guarded(H11Protocol):
        _counted: str | None = None
        _deadline: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            client = self.client[0] if self.client else ""
            refused = guard.admit(client)
            if refused is not None:
                self._refuse(503, "Service Unavailable", refused)
                return
            self._counted = client
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._counted is not None:
                guard.release(self._counted)
                self._counted = None
            super().connection_lost(exc)

        def _refuse(self, status: int, reason: str, message: str) -> None:
            """Answer and close; what the client still sends is read and dropped for a moment,
            as closing with unread data resets the connection and the client may lose the
            answer."""
            self._disarm()
            self._refused = True
            self.transport.write(_refusal(status, reason, message))
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self.cycle is None or self.cycle.response_complete:  # a request head is due
                if self._deadline is None:
                    self._arm()  # the first byte of the next request on a kept-alive connection
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    # h11 bounds only a head that arrives in pieces; this bounds any head.
                    message = f"the request head is over {MAX_HEAD_BYTES // 1024} KiB"
                    self._refuse(431, "Request Header Fields Too Large", message)
                    return
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:
                self._disarm()  # the whole head is in

        def send_400_response(self, msg: str) -> None:
            # Bytes that are not an HTTP/1.1 request: refused in the API's JSON like the rest.
            self._refuse(400, "Bad Request", f"not an HTTP request ({msg})")

        def _arm(self) -> None:
            self._head_bytes = 0
            self._deadline = self.loop.call_later(header_deadline_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                message = f"the request head did not arrive within {header_deadline_s:g} s"
                self._refuse(408, "Request Timeout", message)

    return Guarded


class ServerThread:
    """An ASGI app served by uvicorn on a socket bound here, from a thread of its own."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        guard: ConnectionGuard | None = None,
        header_deadline_s: float = HEADER_DEADLINE_S,
    ) -> None:
        import uvicorn

        # Bound here, not by uvicorn, so a port in use is an OSError for the caller (uvicorn
        # would log it and exit the process) and port 0 gives the real port at once.
        self.socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
            self.socket.listen(BACKLOG)
        except OSError:
            self.socket.close()
            raise
        self.port = int(self.socket.getsockname()[1])
        self.guard = guard or ConnectionGuard()
        config = uvicorn.Config(
            app,
            loop="asyncio",
            http=_protocol(self.guard, header_deadline_s),
            lifespan="off",
            log_config=None,
            log_level=logging.ERROR,  # its per-request warnings are answered to the client
            access_log=False,
            proxy_headers=False,  # the client address counts: no header may stand in for it
            server_header=False,
            backlog=BACKLOG,
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="zsad-http", daemon=True)
        self._failure: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 (reported by start(), not lost on a thread)
            self._failure = exc

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve(sockets=[self.socket])

    def start(self, timeout: float = 10.0) -> None:
        """Serve from now on (returns once the server accepts connections)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.socket.close()
                raise ZsadError(f"the HTTP server did not start ({self._failure or 'timed out'})")
            time.sleep(0.01)

    def stop(self, timeout: float) -> None:
        """Close the listener and every connection, waiting up to ``timeout`` seconds."""
        self.server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.server.force_exit = True
            self._thread.join(1.0)
        self.socket.close()
