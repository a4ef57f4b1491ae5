"""Publish the journal to an MQTT broker: every record, in order, at least once (QoS 1).

The publisher reads OUT/results.jsonl through a ``JournalFeed`` and keeps the id of the first
record the broker has not acknowledged in OUT/mqtt-position.json. Each connection starts from
that position, so a broker outage, a dropped connection or a station restart (even kill -9)
re-sends what was not acknowledged: a consumer sees every record, and sees one twice only after
such an event, with the same ``id`` to de-duplicate by. At most ``WINDOW`` messages are in
flight; the rest wait in the journal, never in memory, and the station never waits for the
broker. A retained message on PREFIX/status carries the station's status; the last will sets it
to ``offline`` when the station disappears without a goodbye.

A camera station also takes triggers on PREFIX/trigger: a message (a part id as plain text, or
``{"part_id": "..."}``; empty for none) asks for one frame. Who may publish there is the
broker's to decide (its ACLs); a retained trigger is ignored, so a reconnect never replays one.
A trigger the station refuses is answered on PREFIX/trigger/refused.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from typing import Any

from zsad.errors import ZsadError
from zsad.formats.atomic import write_json
from zsad.station.line.config import MqttConfig
from zsad.station.line.feed import JournalFeed
from zsad.station.line.hub import LineContext, TriggerRefused

POSITION = "mqtt-position.json"
WINDOW = 64  # messages in flight at once
BACKOFF_S = (0.5, 30.0)  # first and longest wait between connection attempts
CONNECT_TIMEOUT_S = 5.0
SAVE_EVERY_S = 0.2  # the acknowledged position is written at most this often (and at the end)
FINAL_STATES = ("stopped", "error")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class MqttSink:
    """The MQTT publisher of one station (see the module's docstring for its guarantees)."""

    name = "mqtt"

    def __init__(self, config: MqttConfig) -> None:
        try:
            import paho.mqtt.client  # noqa: F401  (fail now, not on the publisher's thread)
        except ImportError as exc:
            raise ZsadError(f"--mqtt needs paho-mqtt: pip install 'zsad[line]' ({exc})") from exc
        config.check()
        self.config = config
        self.host, self.port, self.tls = config.endpoint()
        self.results_topic = f"{config.topic}/results"
        self.status_topic = f"{config.topic}/status"
        self.trigger_topic = f"{config.topic}/trigger"
        self.refused_topic = f"{config.topic}/trigger/refused"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._connected = False
        self._acked = 0  # every id below this was acknowledged by the broker
        self._saved = -1
        self._in_flight: dict[int, int] = {}  # message id -> record id
        self._done: set[int] = set()  # acknowledged record ids at or above _acked
        self._early: set[int] = set()  # message ids acknowledged before publish() returned
        self._status: dict[str, Any] | None = None
        self._last_error: str | None = None
        self._outage_since: str | None = None
        self._published = 0
        self._connect_answered = threading.Event()
        self._connect_reason: Any = None
        self._deadline = 0.0  # set by stop(): deliver until then
        self._saved_at = 0.0
        self._stopped = False

    # ------------------------------------------------------------------ Sink

    def start(self, context: LineContext) -> None:
        """Load the acknowledged position and start publishing on a thread of its own."""
        self.context = context
        self.position_file = context.out / POSITION
        self._acked = self._load_position()
        self._saved = self._acked
        context.on_status(self._on_status)
        context.on_records(self._wake)
        self._thread = threading.Thread(target=self._run, name="zsad-mqtt", daemon=True)
        self._thread.start()

    def describe(self) -> dict[str, Any]:
        """Broker, state, connection, acknowledged position and backlog."""
        with self._lock:
            acked = self._acked
        state = "connected" if self._connected else "disconnected"
        return {
            "state": "stopped" if self._stopped else state,
            "broker": f"{self.host}:{self.port}",
            "topic": self.config.topic,
            "connected": self._connected,
            "published": self._published,
            "acknowledged": acked,
            "backlog": max(0, self.context.records - acked),
            "outage_since": self._outage_since,
            "last_error": self._last_error,
        }

    def stop(self, timeout: float) -> None:
        """Deliver what can be delivered within ``timeout``, say goodbye, and stop."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)
        self._save_position(force=True)
        self._stopped = True

    # ------------------------------------------------------------------ position

    def _load_position(self) -> int:
        if not self.position_file.is_file():
            return 0
        try:
            saved = json.loads(self.position_file.read_text())
            position = int(saved["next_id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ZsadError(
                f"{self.position_file}: not an MQTT position file ({exc}); delete it to publish "
                "the whole journal again"
            ) from exc
        if (saved.get("broker"), saved.get("topic")) != (self._destination(), self.config.topic):
            self.context.echo(
                f"zsad: mqtt: {self._destination()} {self.config.topic} is a new destination; "
                "publishing the whole journal to it"
            )
            return 0
        return min(position, self.context.records)

    def _destination(self) -> str:
        return f"{self.host}:{self.port}"

    def _save_position(self, *, force: bool = False) -> None:
        with self._lock:
            acked = self._acked
        if acked == self._saved:
            return
        now = time.monotonic()
        if not force and now - self._saved_at < SAVE_EVERY_S:
            return
        write_json(
            self.position_file,
            {"next_id": acked, "broker": self._destination(), "topic": self.config.topic},
        )
        self._saved, self._saved_at = acked, now

    # ------------------------------------------------------------------ callbacks

    def _on_status(self, status: dict[str, Any]) -> None:
        self._status = status
        self._wake.set()

    def _on_connect(self, client: Any, _data: Any, _flags: Any, reason: Any, _p: Any) -> None:
        self._connect_reason = reason
        self._connected = not reason.is_failure
        if self._connected:
            client.subscribe(self.trigger_topic, qos=1)
        self._connect_answered.set()

    def _on_message(self, client: Any, _data: Any, message: Any) -> None:
        """A trigger from the line; a refusal is published where the PLC can read it."""
        if message.topic != self.trigger_topic or message.retain:
            return
        try:
            text = message.payload.decode().strip()
            part_id = json.loads(text)["part_id"] if text.startswith("{") else (text or None)
            self.context.trigger(part_id)
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, ZsadError) as exc:
            busy = isinstance(exc, TriggerRefused) and exc.busy
            error = str(exc) if isinstance(exc, ZsadError) else f"not a trigger ({exc!r})"
            refusal = {"payload": message.payload[:100].decode(errors="replace"), "error": error}
            client.publish(self.refused_topic, json.dumps({**refusal, "busy": busy}), qos=1)

    def _on_disconnect(self, _client: Any, _data: Any, _flags: Any, reason: Any, _p: Any) -> None:
        was_connected, self._connected = self._connected, False
        if was_connected and reason.is_failure:
            self._last_error = f"disconnected: {reason}"
        self._wake.set()

    def _on_publish(self, _client: Any, _data: Any, mid: int, _reason: Any, _p: Any) -> None:
        with self._lock:
            record_id = self._in_flight.pop(mid, None)
            if record_id is None:
                self._early.add(mid)
                return
            self._acknowledge(record_id)
        self._wake.set()

    def _acknowledge(self, record_id: int) -> None:
        """Count ``record_id`` as delivered (holding the lock); advance past every such id."""
        if record_id < self._acked:
            return
        self._done.add(record_id)
        while self._acked in self._done:
            self._done.remove(self._acked)
            self._acked += 1

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        delay = BACKOFF_S[0]
        while not self._stop.is_set():
            client = self._connect()
            if client is None:
                if self._outage_since is None:
                    self._outage_since = _now_iso()
                    self.context.echo(
                        f"zsad: mqtt: broker {self._destination()} unreachable "
                        f"({self._last_error}); results wait in the journal, retrying"
                    )
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_S[1])
                continue
            if self._outage_since is not None:
                self.context.echo(f"zsad: mqtt: connected to {self._destination()} again")
            self._outage_since, delay = None, BACKOFF_S[0]
            try:
                self._publish_while_connected(client)
            except ZsadError as exc:  # a journal line edited by hand: say so, try again later
                if self._last_error != str(exc):
                    self.context.echo(f"zsad: mqtt: {exc}")
                self._last_error = str(exc)
                self._stop.wait(BACKOFF_S[1])
            finally:
                client.disconnect()
                client.loop_stop()
                self._connected = False

    def _connect(self) -> Any:
        """A connected paho client, or None (the reason in ``_last_error``)."""
        import paho.mqtt.client as mqtt

        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.config.client_id or f"zsad-{self.config.topic.replace('/', '-')}",
            reconnect_on_failure=False,
        )
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.max_inflight_messages_set(WINDOW)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.will_set(self.status_topic, json.dumps({"state": "offline"}), qos=1, retain=True)
        if self.config.username is not None:
            client.username_pw_set(self.config.username, self.config.password())
        if self.tls:
            ca = None if self.config.ca_file is None else str(self.config.ca_file)
            client.tls_set(ca_certs=ca)
        self._connect_answered = threading.Event()
        self._connect_reason = None
        try:
            client.connect(self.host, self.port, keepalive=15)
        except (OSError, ValueError) as exc:
            self._last_error = str(exc)
            return None
        client.loop_start()
        if not self._connect_answered.wait(CONNECT_TIMEOUT_S) or not self._connected:
            reason = self._connect_reason
            self._last_error = "no answer to CONNECT" if reason is None else f"refused: {reason}"
            client.loop_stop()
            return None
        return client

    def _publish_while_connected(self, client: Any) -> None:
        with self._lock:
            start = self._acked
            self._in_flight.clear()
            self._done.clear()
            self._early.clear()
        feed = JournalFeed(self.context.journal, start)
        sent_status: dict[str, Any] | None = None
        sent: Any = None  # paho's handle on the publication of sent_status
        try:
            while self._connected:
                self._wake.clear()
                if self._status is not None and self._status is not sent_status:
                    sent_status = self._status
                    sent = self._publish_status(client, sent_status)
                with self._lock:
                    room = WINDOW - len(self._in_flight)
                if room > 0:
                    for record in feed.read(room):
                        self._publish(client, record)
                self._save_position()
                if self._stop.is_set() and (self._drained() or self._past_deadline()):
                    self._say_goodbye(client, sent_status, sent)
                    return
                self._wake.wait(0.5)
        finally:
            feed.close()

    def _publish(self, client: Any, record: dict[str, Any]) -> None:
        payload = json.dumps(record, separators=(",", ":"))
        # Never hold our lock inside paho: it calls on_publish holding its own.
        info = client.publish(self.results_topic, payload, qos=1)
        with self._lock:
            if info.mid in self._early:  # acknowledged before publish() returned
                self._early.discard(info.mid)
                self._acknowledge(int(record["id"]))
            else:
                self._in_flight[info.mid] = int(record["id"])
        self._published += 1

    def _publish_status(self, client: Any, status: dict[str, Any]) -> Any:
        return client.publish(self.status_topic, json.dumps(status), qos=1, retain=True)

    def _drained(self) -> bool:
        with self._lock:
            return not self._in_flight and self._acked >= self.context.records

    def _past_deadline(self) -> bool:
        return time.monotonic() >= self._deadline

    def _say_goodbye(self, client: Any, sent_status: dict[str, Any] | None, sent: Any) -> None:
        """Leave one retained final status (a clean disconnect does not send the last will)."""
        status = self._status or {}
        # The station's own final status, already published, is the goodbye: not sent twice.
        if sent is None or status is not sent_status or status.get("state") not in FINAL_STATES:
            final = dict(status)
            if final.get("state") not in FINAL_STATES:
                final["state"] = "stopped"
            sent = self._publish_status(client, final)
        sent.wait_for_publish(max(0.1, self._deadline - time.monotonic()))
