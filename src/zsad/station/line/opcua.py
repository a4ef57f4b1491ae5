"""OPC UA: the station as an object a PLC or MES reads, subscribes to and acknowledges.

The server runs on its own thread with its own asyncio loop; the station thread only wakes it.
The counters and the last result are read from the journal (a ``JournalFeed`` from record 0),
so they match results.jsonl and survive restarts. Every node id is a string in the namespace
``NAMESPACE`` and equals the node's browse path under Objects, so it never changes. The layout
follows the OPC UA Machine Vision companion specification (OPC 40100) where it fits: the
station's state as a VisionStateMachine CurrentState, and a result's ResultId, ResultState,
PartId and CreationTime; the rest (score, OK/NG, counters) is zsad's own, in plain types a PLC
reads directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import threading
from datetime import datetime, timezone
from typing import Any

from zsad.errors import ZsadError
from zsad.formats.atomic import write_json
from zsad.station.line.certificates import server_credentials, trusted_certificates
from zsad.station.line.config import OpcuaConfig
from zsad.station.line.feed import JournalFeed
from zsad.station.line.hub import LineContext, TriggerRefused

NAMESPACE = "urn:zsad:station"
ACKNOWLEDGED = "opcua-ack.json"  # in OUT: the last id the PLC acknowledged, kept over restarts
START_TIMEOUT_S = 60.0
HEARTBEAT_S = 1.0
LINGER_S = 0.3
NO_TIME = datetime(1601, 1, 1, tzinfo=timezone.utc)  # OPC UA's "no time" (DateTime 0)

# The station object's variables: node id -> OPC UA built-in type and value before any result.
# ResultId comes last in LastResult: it is written last, so a client that reacts to a new
# ResultId reads the rest of that result, not of the one before (docs/line.md lists them all).
VARIABLES: dict[str, tuple[str, Any]] = {
    "Station.State": ("String", "starting"),
    "Station.VisionStateMachine.CurrentState": ("String", "Preoperational"),
    "Station.Heartbeat": ("UInt32", 0),
    "Station.ImagesPerSecond": ("Double", 0.0),
    "Station.Backlog": ("UInt32", 0),
    "Station.Threshold": ("Double", math.nan),
    "Station.Error": ("String", ""),
    "Station.Counters.Parts": ("UInt32", 0),
    "Station.Counters.OK": ("UInt32", 0),
    "Station.Counters.NG": ("UInt32", 0),
    "Station.Counters.Rejected": ("UInt32", 0),
    "Station.LastResult.PartId": ("String", ""),
    "Station.LastResult.Path": ("String", ""),
    "Station.LastResult.Index": ("Int64", -1),
    "Station.LastResult.Score": ("Double", math.nan),
    "Station.LastResult.Decision": ("String", ""),
    "Station.LastResult.IsNG": ("Boolean", False),
    "Station.LastResult.Threshold": ("Double", math.nan),
    "Station.LastResult.ResultState": ("Int32", 0),
    "Station.LastResult.CreationTime": ("DateTime", NO_TIME),
    "Station.LastResult.ResultId": ("Int64", -1),
    "Station.AcknowledgedResultId": ("Int64", -1),
}
OBJECTS = ("Station", "Station.VisionStateMachine", "Station.Counters", "Station.LastResult")
ACKNOWLEDGE = "Station.Acknowledge"
TRIGGER = "Station.Trigger"
ACKNOWLEDGED_ID = "Station.AcknowledgedResultId"  # writable: the other way to acknowledge
# The station's states in OPC 40100's VisionStateMachine.
VISION_STATES = {
    "starting": "Preoperational",
    "warming-up": "Operational",
    "running": "Operational",
    "stopped": "Halted",
    "error": "Error",
}
COMPLETED, FAILED = 1, 4  # OPC 40100 ResultState: scored / the image could not be read
SECURITY_POLICIES = {
    "none": "NoSecurity",
    "sign": "Basic256Sha256_Sign",
    "sign-and-encrypt": "Basic256Sha256_SignAndEncrypt",
}


def result_values(record: dict[str, Any]) -> dict[str, Any]:
    """The LastResult variables for one journal record (ResultId last)."""
    decision = record.get("decision") or ""
    score, threshold = record.get("score"), record.get("threshold")
    try:
        created = datetime.fromisoformat(record["time"])
    except (KeyError, TypeError, ValueError):
        created = NO_TIME
    index = record.get("index")
    return {
        "Station.LastResult.PartId": str(record.get("part_id") or record.get("name") or ""),
        "Station.LastResult.Path": str(record.get("path") or ""),
        "Station.LastResult.Index": -1 if index is None else int(index),
        "Station.LastResult.Score": math.nan if score is None else float(score),
        "Station.LastResult.Decision": decision,
        "Station.LastResult.IsNG": decision == "NG",
        "Station.LastResult.Threshold": math.nan if threshold is None else float(threshold),
        "Station.LastResult.ResultState": FAILED if decision == "rejected" else COMPLETED,
        "Station.LastResult.CreationTime": created,
        "Station.LastResult.ResultId": int(record["id"]),
    }


def status_values(status: dict[str, Any]) -> dict[str, Any]:
    """The station-level variables for one status (as in status.json)."""
    state = str(status.get("state") or "starting")
    threshold = status.get("threshold")
    return {
        "Station.State": state,
        "Station.VisionStateMachine.CurrentState": VISION_STATES.get(state, "Preoperational"),
        "Station.ImagesPerSecond": float(status.get("images_per_s_last_minute") or 0.0),
        "Station.Backlog": min(int(status.get("backlog") or 0), 2**32 - 1),
        "Station.Threshold": math.nan if threshold is None else float(threshold),
        "Station.Error": str(status.get("error") or ""),
    }


class Tally:
    """The counters, from every journal record seen so far."""

    def __init__(self) -> None:
        self.seen = self.parts = self.ok = self.ng = self.rejected = 0

    def add(self, record: dict[str, Any]) -> None:
        """Count one record."""
        self.seen += 1
        decision = record.get("decision")
        if decision == "rejected":
            self.rejected += 1
            return
        self.parts += 1
        self.ok += decision == "OK"
        self.ng += decision == "NG"

    def values(self) -> dict[str, Any]:
        """The Counters variables."""
        return {
            "Station.Counters.Parts": self.parts,
            "Station.Counters.OK": self.ok,
            "Station.Counters.NG": self.ng,
            "Station.Counters.Rejected": self.rejected,
        }


class OpcuaSink:
    """Serves the station object at ``config.url``, fed from the journal."""

    name = "opcua"

    def __init__(self, config: OpcuaConfig) -> None:
        config.check()
        self.config = config
        self.host, self.port = config.endpoint()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._status_changed: asyncio.Event | None = None
        self._ack_changed: asyncio.Event | None = None
        self._server: Any = None
        self._state = "starting"
        self._error: str | None = None
        self._tally = Tally()
        self._last_id = -1
        self._acknowledged = -1
        self._shown: dict[str, Any] = {}

    # ------------------------------------------------------------------ station side

    def start(self, context: LineContext) -> None:
        """Catch up with the journal and listen; waits for that (not for clients), so a port in
        use or a bad certificate stops the station before it scores anything."""
        self._context = context
        self._acknowledged = self._load_acknowledged()
        context.on_status(self._on_status)
        self._thread = threading.Thread(target=self._serve, name="zsad-opcua", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            context.echo(f"zsad: opcua: still starting after {START_TIMEOUT_S:.0f} s")
            return
        if self._state == "failed":
            raise ZsadError(self._error or f"--opcua {self.config.url}: the server did not start")
        trust = "admitted: any client certificate"
        if self.config.trusted is not None:
            trust = f"admitted: the clients in {self.config.trusted}"
        if self.config.security == "none":
            trust = "no security, anonymous clients"
        context.echo(f"zsad: opcua: serving {self.config.url} ({trust}), namespace {NAMESPACE}")

    def describe(self) -> dict[str, Any]:
        """Endpoint, state, connected clients, last result shown, last acknowledged id, error."""
        clients = None
        bserver = getattr(self._server, "bserver", None)
        if bserver is not None and self._state == "serving":
            clients = len(bserver.clients)
        return {
            "endpoint": self.config.url,
            "security": self.config.security,
            "namespace": NAMESPACE,
            "state": self._state,
            "clients": clients,
            "last_result_id": self._last_id,
            "acknowledged_id": self._acknowledged,
            "error": self._error,
        }

    def stop(self, timeout: float) -> None:
        """Show the final status, close the sessions and end the thread."""
        self._wake(self._stopping)
        if self._thread is not None:
            self._thread.join(timeout)

    def _on_status(self, _status: dict[str, Any]) -> None:
        # On the station's thread: only wake the server's loop.
        self._wake(self._status_changed)

    def _wake(self, event: asyncio.Event | None) -> None:
        loop = self._loop
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(event.set)

    def _load_acknowledged(self) -> int:
        path = self._context.out / ACKNOWLEDGED
        if not path.is_file():
            return -1
        try:
            return int(json.loads(path.read_text())["acknowledged_id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ZsadError(
                f"{path}: not an acknowledgement file ({exc}); delete it to go on"
            ) from exc

    # ------------------------------------------------------------------ server thread

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # whatever broke the server, the station scores on and says so
            self._error = f"OPC UA server failed: {type(exc).__name__}: {exc}"
            self._state = "failed" if not self._ready.is_set() else "stopped"
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping, self._status_changed = asyncio.Event(), asyncio.Event()
        self._ack_changed = asyncio.Event()
        feed = JournalFeed(self._context.journal)
        try:
            await self._start_server(feed)
        except (ZsadError, OSError) as exc:
            self._state, self._error = "failed", self._start_error(exc)
            feed.close()
            return
        self._state = "serving"
        self._ready.set()
        tasks = [
            asyncio.create_task(job)
            for job in (self._follow(feed), self._heartbeat(), self._statuses(), self._persist())
        ]
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopping and task.exception() is not None:
                    exc = task.exception()
                    self._error = f"OPC UA server failed: {type(exc).__name__}: {exc}"
                    self._context.echo(f"zsad: opcua: {self._error}; the station scores on")
        finally:
            for task in [stopping, *tasks]:
                task.cancel()
            with contextlib.suppress(Exception):
                await self._show(status_values(self._context.status()))
                if self._ack_changed.is_set():
                    await self._store_acknowledged()
                # Long enough for subscribers to be told "stopped" or "error" before the end.
                await asyncio.sleep(LINGER_S)
            await self._server.stop()
            feed.close()
            self._state = "stopped"

    def _start_error(self, exc: Exception) -> str:
        if isinstance(exc, ZsadError):
            return str(exc)
        reason = os.strerror(exc.errno) if getattr(exc, "errno", None) else str(exc)
        return f"--opcua {self.config.url}: cannot listen on {self.host}:{self.port} ({reason})"

    async def _start_server(self, feed: JournalFeed) -> None:
        from asyncua import Server, ua

        # asyncua logs (with tracebacks) what describe() and the errors here already say.
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)
        server = self._server = Server()
        await server.init()
        server.set_endpoint(self.config.url)
        server.set_server_name("zsad station")
        server.product_uri = "urn:zsad"
        policy = getattr(ua.SecurityPolicyType, SECURITY_POLICIES[self.config.security])
        server.set_security_policy([policy])
        # The secure channel (the client's certificate) is the credential: no user tokens.
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        if self.config.security == "none":
            await server.set_application_uri(f"urn:zsad:station:{socket.gethostname()}")
        else:
            await self._load_credentials(server)
        index = await server.register_namespace(NAMESPACE)
        self._nodes = await self._build(server, index)
        # The counters and last result of every record journaled so far.
        last = await asyncio.to_thread(self._catch_up, feed)
        if self._acknowledged >= self._tally.seen:
            raise ZsadError(
                f"{self._context.out / ACKNOWLEDGED}: acknowledges result {self._acknowledged} "
                f"but the journal holds {self._tally.seen} records; delete it to go on"
            )
        await self._show({**status_values(self._context.status()), **self._tally.values()})
        if last is not None:
            await self._show(result_values(last))
        await self._show({ACKNOWLEDGED_ID: self._acknowledged})
        await server.start()

    async def _load_credentials(self, server: Any) -> None:
        assert self.config.certificate is not None and self.config.private_key is not None
        credentials = server_credentials(self.config.certificate, self.config.private_key)
        await server.load_certificate(credentials.certificate_der)
        await server.load_private_key(credentials.private_key_pem, format="pem")
        await server.set_application_uri(credentials.application_uri)
        trusted = None
        if self.config.trusted is not None:
            trusted = trusted_certificates(self.config.trusted)
        server.iserver.set_user_manager(SecureSessionsOnly(trusted))

    async def _build(self, server: Any, index: int) -> dict[str, Any]:
        from asyncua import ua

        parents: dict[str, Any] = {"": server.nodes.objects}
        for path in OBJECTS:
            parent, _, name = path.rpartition(".")
            node_id = ua.NodeId(path, index)
            parents[path] = await parents[parent].add_object(node_id, ua.QualifiedName(name, index))
        nodes = {}
        for path, (kind, value) in VARIABLES.items():
            parent, _, name = path.rpartition(".")
            node_id = ua.NodeId(path, index)
            nodes[path] = node_id
            await parents[parent].add_variable(
                node_id,
                ua.QualifiedName(name, index),
                value,
                varianttype=getattr(ua.VariantType, kind),
            )
        writable = server.get_node(nodes[ACKNOWLEDGED_ID])
        await writable.set_writable()
        server.set_attribute_value_setter(nodes[ACKNOWLEDGED_ID], self._acknowledged_written)
        methods = (
            (ACKNOWLEDGE, "Acknowledge", self._acknowledge, "ResultId", ua.ObjectIds.Int64,
             "The id of the result the PLC has acted on"),
            (TRIGGER, "Trigger", self._trigger, "PartId", ua.ObjectIds.String,
             "The part in place (empty for none): in its result"),
        )  # fmt: skip
        for node_id, name, handler, argument, kind, description in methods:
            await parents["Station"].add_method(
                ua.NodeId(node_id, index),
                ua.QualifiedName(name, index),
                handler,
                [
                    ua.Argument(
                        Name=argument,
                        DataType=ua.NodeId(kind),
                        ValueRank=-1,
                        Description=ua.LocalizedText(description),
                    )
                ],
                [],
            )
        return nodes

    def _catch_up(self, feed: JournalFeed) -> dict[str, Any] | None:
        last = None
        while records := feed.read(4096):
            for record in records:
                self._tally.add(record)
            last = records[-1]
        return last

    async def _show(self, values: dict[str, Any]) -> None:
        """Write the variables that changed, in the order given, with one source timestamp."""
        from asyncua import ua

        now = datetime.now(timezone.utc)
        for path, value in values.items():
            if path in self._shown and _same(self._shown[path], value):
                continue
            variant = ua.Variant(value, getattr(ua.VariantType, VARIABLES[path][0]))
            data = ua.DataValue(variant, SourceTimestamp=now, ServerTimestamp=now)
            await self._server.write_attribute_value(self._nodes[path], data)
            self._shown[path] = value
        if "Station.LastResult.ResultId" in values:
            self._last_id = values["Station.LastResult.ResultId"]

    async def _follow(self, feed: JournalFeed) -> None:
        """Show every new record, one at a time, so clients that queue see each of them."""
        while True:
            for record in await asyncio.to_thread(self._next_records, feed):
                self._tally.add(record)
                result = result_values(record)
                result_id = result.pop("Station.LastResult.ResultId")
                await self._show({**result, **self._tally.values()})
                await self._show({"Station.LastResult.ResultId": result_id})

    def _next_records(self, feed: JournalFeed) -> list[dict[str, Any]]:
        # On a worker thread: the wait is short, so a stop is never held up for long.
        self._context.wait_for_records(feed.position, 0.5)
        return feed.read(256)

    async def _heartbeat(self) -> None:
        beat = 0
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            beat = (beat + 1) % 2**32
            await self._show({"Station.Heartbeat": beat})

    async def _statuses(self) -> None:
        assert self._status_changed is not None
        while True:
            await self._status_changed.wait()
            self._status_changed.clear()
            await self._show(status_values(self._context.status()))

    # ------------------------------------------------------------------ acknowledgement

    async def _acknowledge(self, _parent: Any, result_id: Any) -> Any:
        """The Acknowledge method: the PLC has acted on result ``ResultId``."""
        from asyncua import ua

        if not _is_int64(result_id):
            return ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
        if not 0 <= result_id.Value < self._tally.seen:
            return ua.StatusCode(ua.StatusCodes.BadOutOfRange)
        await self._server.write_attribute_value(
            self._nodes[ACKNOWLEDGED_ID], ua.DataValue(result_id)
        )
        return []

    async def _trigger(self, _parent: Any, part_id: Any) -> Any:
        """The Trigger method: one frame from the camera, its result carrying ``PartId``."""
        from asyncua import ua

        if part_id is None or part_id.VariantType != ua.VariantType.String or part_id.is_array:
            return ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
        try:
            await asyncio.to_thread(self._context.trigger, part_id.Value or None)
        except TriggerRefused as exc:
            busy = exc.busy  # the camera is away: BadResourceUnavailable, try again later
            codes = ua.StatusCodes
            return ua.StatusCode(codes.BadResourceUnavailable if busy else codes.BadInvalidState)
        except ZsadError:
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        return []

    def _acknowledged_written(self, node: Any, attribute: Any, data: Any) -> None:
        """Every write of AcknowledgedResultId (a client's, or the method's) goes through here."""
        from asyncua import ua
        from asyncua.common.utils import ServiceError

        if not _is_int64(data.Value):
            raise ServiceError(ua.StatusCodes.BadTypeMismatch)
        value = data.Value.Value
        if not -1 <= value < self._tally.seen:
            raise ServiceError(ua.StatusCodes.BadOutOfRange)
        node.attributes[attribute].value = data
        self._shown[ACKNOWLEDGED_ID] = value
        if value != self._acknowledged:
            self._acknowledged = value
            self._wake(self._ack_changed)

    async def _persist(self) -> None:
        assert self._ack_changed is not None
        while True:
            await self._ack_changed.wait()
            self._ack_changed.clear()
            await self._store_acknowledged()

    async def _store_acknowledged(self) -> None:
        payload = {"acknowledged_id": self._acknowledged, "time": _now_iso()}
        path = self._context.out / ACKNOWLEDGED
        await asyncio.to_thread(write_json, path, payload)


class SecureSessionsOnly:
    """Admits a session only over a secure channel, and with a trust list only for a client
    certificate on it: asyncua also opens unsecured channels (for discovery), and a session
    over one must not read or acknowledge anything."""

    def __init__(self, trusted: frozenset[bytes] | None) -> None:
        self.trusted = trusted

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: bytes | None = None,
    ) -> Any:
        """The user of a session: None (refused) unless its channel carries a certificate that
        is admitted."""
        from asyncua.crypto.permission_rules import User, UserRole

        if not certificate or (self.trusted is not None and certificate not in self.trusted):
            return None
        return User(role=UserRole.User, name="client certificate")


def _is_int64(variant: Any) -> bool:
    """Whether ``variant`` is one Int64: the declared type of ResultId and of its variable."""
    from asyncua import ua

    return (
        variant is not None and variant.VariantType == ua.VariantType.Int64 and not variant.is_array
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
