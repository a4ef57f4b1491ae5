"""The station's MQTT publisher against a real mosquitto broker: every journaled record reaches a
consumer, in order, through broker outages and a station kill -9, de-duplicable by id."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers import (
    MOSQUITTO,
    Broker,
    free_port,
    one_line_error,
    popen_watch,
    require_service,
    station_records,
    wait_for_lines,
    write_frame,
    zsad,
)

pytestmark = pytest.mark.slow

TOPIC = "plant/line1/station1"


@pytest.fixture(autouse=True)
def _needs_broker_and_client() -> None:
    require_service(Path(MOSQUITTO).exists(), "mosquitto is not installed (Debian: mosquitto)")
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (zsad[line])")


class Consumer:
    """A QoS 1 subscriber with a persistent session, collecting every message it receives."""

    def __init__(self, port: int, auth: tuple[str, str] | None = None) -> None:
        import paho.mqtt.client as mqtt

        self.ids: list[int] = []
        self.status: list[dict] = []
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="consumer", clean_session=False
        )
        if auth:
            self.client.username_pw_set(*auth)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{TOPIC}/#", qos=1)
        self.client.on_message = self._message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect_async("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        self.lock = threading.Lock()

    def _message(self, _client: object, _data: object, message: object) -> None:
        payload = json.loads(message.payload)  # type: ignore[attr-defined]
        with self.lock:
            if message.topic.endswith("/results"):  # type: ignore[attr-defined]
                self.ids.append(payload["id"])
            else:
                self.status.append(payload)

    def wait_for_all(self, count: int, timeout: float = 60) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if set(range(count)) <= set(self.ids):
                    return list(self.ids)
            time.sleep(0.05)
        raise AssertionError(f"received {sorted(set(self.ids))}, wanted ids 0..{count - 1}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _assert_in_order_at_least_once(ids: list[int], count: int) -> None:
    """Every id arrived; a repeat only re-sends a run of earlier ids (QoS 1 after an outage)."""
    assert set(ids) == set(range(count)), sorted(set(range(count)) - set(ids))
    first_seen = [i for n, i in enumerate(ids) if i not in ids[:n]]
    assert first_seen == sorted(first_seen), "first deliveries out of order"


def _station(hot: Path, out: Path, bundle: Path, port: int, *extra: str):
    return popen_watch(
        str(hot),
        "--bundle",
        str(bundle),
        "--out",
        str(out),
        "--bank",
        "3",
        "--poll-s",
        "0.05",
        "--status-every",
        "0.5",
        "--mqtt",
        f"mqtt://127.0.0.1:{port}",
        "--mqtt-topic",
        TOPIC,
        *extra,
    )


def _wait_for_status(out: Path, check, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check(json.loads((out / "status.json").read_text())["sinks"]["mqtt"]):
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError((out / "status.json").read_text())


def _frames(hot: Path, start: int, stop: int) -> None:
    for i in range(start, stop):
        write_frame(hot / f"{i:03d}.png", i, "stain" if i % 5 == 4 else None)


def test_records_reach_the_consumer_through_broker_outages_and_a_station_kill(
    bundle: Path, tmp_path: Path
) -> None:
    hot, out = tmp_path / "hot", tmp_path / "out"
    hot.mkdir()
    port = free_port()
    broker = Broker(tmp_path / "broker", port)
    # 1. The broker is down at start: the station scores on, results wait in the journal.
    station = _station(hot, out, bundle, port)
    _frames(hot, 0, 5)
    wait_for_lines(out / "results.jsonl", 5, station)
    broker.start()
    consumer = Consumer(port)
    try:
        consumer.wait_for_all(5)
        # 2. The broker is killed mid-run and restarted.
        broker.kill()
        _frames(hot, 5, 9)
        wait_for_lines(out / "results.jsonl", 9, station)
        _wait_for_status(out, lambda mqtt: not mqtt["connected"] and mqtt["backlog"] > 0)
        broker.start()
        consumer.wait_for_all(9)
        # 3. The station is killed (-9) and restarted while the broker is down.
        station.send_signal(signal.SIGKILL)
        station.wait(30)
        broker.kill()
        station = _station(hot, out, bundle, port, "--exit-when-idle", "20")
        _frames(hot, 9, 12)
        wait_for_lines(out / "results.jsonl", 12, station)
        broker.start()
        ids = consumer.wait_for_all(12)
    finally:
        consumer.close()
        station.send_signal(signal.SIGTERM)
        _, stderr = station.communicate(timeout=60)
        if broker.process:
            broker.kill()
    assert station.returncode == 0, stderr
    _assert_in_order_at_least_once(ids, 12)
    assert [r["id"] for r in station_records(out)] == list(range(12))
    assert "unreachable" in stderr
    position = json.loads((out / "mqtt-position.json").read_text())
    assert position["next_id"] == 12


def test_payload_is_the_journal_record_and_status_is_retained(bundle: Path, tmp_path: Path) -> None:
    hot, out = tmp_path / "hot", tmp_path / "out"
    hot.mkdir()
    port = free_port()
    broker = Broker(tmp_path / "broker", port)
    broker.start()
    consumer = Consumer(port)
    import paho.mqtt.client as mqtt

    records: list[dict] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: c.subscribe(f"{TOPIC}/results", qos=1)
    client.on_message = lambda _c, _d, m: records.append(json.loads(m.payload))
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        _frames(hot, 0, 4)
        time.sleep(0.3)  # the subscriber is in place before the first publish
        station = _station(hot, out, bundle, port, "--exit-when-idle", "1.5")
        _, stderr = station.communicate(timeout=120)
        assert station.returncode == 0, stderr
        consumer.wait_for_all(4)
        deadline = time.monotonic() + 10
        while len(records) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert records == station_records(out)
        # A late subscriber still finds the station's last word.
        retained: list[dict] = []
        late = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        late.on_connect = lambda c, *_: c.subscribe(f"{TOPIC}/status", qos=1)
        late.on_message = lambda _c, _d, m: retained.append(json.loads(m.payload))
        late.connect("127.0.0.1", port)
        late.loop_start()
        deadline = time.monotonic() + 10
        while not retained and time.monotonic() < deadline:
            time.sleep(0.05)
        late.loop_stop()
        assert retained and retained[-1]["state"] == "stopped"
        assert retained[-1]["journal"]["scored"] == 4
        # The live subscriber saw the true phase from the first status, and one goodbye.
        deadline = time.monotonic() + 10
        while "stopped" not in [s["state"] for s in consumer.status]:
            assert time.monotonic() < deadline, consumer.status
            time.sleep(0.05)
        time.sleep(0.5)  # time for a second "stopped" to arrive, were one sent
        states = [s["state"] for s in consumer.status]
        assert states[0] == "warming-up" and states.count("stopped") == 1, states
    finally:
        client.loop_stop()
        consumer.close()
        broker.kill()


def test_password_comes_from_the_environment_and_a_wrong_one_is_reported(
    bundle: Path, tmp_path: Path
) -> None:
    hot, out = tmp_path / "hot", tmp_path / "out"
    hot.mkdir()
    port = free_port()
    passwords = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "station", "s3cret"], check=True
    )
    passwords.chmod(0o600)
    broker = Broker(
        tmp_path / "broker", port, f"allow_anonymous false\npassword_file {passwords}\n"
    )
    broker.start()
    consumer = Consumer(port, auth=("station", "s3cret"))
    try:
        _frames(hot, 0, 2)
        args = ("--mqtt-username", "station", "--exit-when-idle", "2")
        wrong = popen_watch(
            str(hot), "--bundle", str(bundle), "--out", str(tmp_path / "wrong"), "--bank", "3",
            "--mqtt", f"mqtt://127.0.0.1:{port}", "--mqtt-topic", TOPIC, *args,
            env={"ZSAD_MQTT_PASSWORD": "nope"},
        )  # fmt: skip
        _, stderr = wrong.communicate(timeout=120)
        assert wrong.returncode == 0 and "refused" in stderr, stderr
        right = popen_watch(
            str(hot), "--bundle", str(bundle), "--out", str(out), "--bank", "3",
            "--mqtt", f"mqtt://127.0.0.1:{port}", "--mqtt-topic", TOPIC, *args,
            env={"ZSAD_MQTT_PASSWORD": "s3cret"},
        )  # fmt: skip
        _, stderr = right.communicate(timeout=120)
        assert right.returncode == 0, stderr
        consumer.wait_for_all(2)
    finally:
        consumer.close()
        broker.kill()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--mqtt", "http://127.0.0.1:1883"], "give mqtt://HOST:PORT"),
        (["--mqtt", "mqtt://127.0.0.1:1883", "--mqtt-topic", "a/#"], "without wildcards"),
        (
            ["--mqtt", "mqtt://127.0.0.1:1883", "--mqtt-password-file", "/nonexistent"],
            "cannot read",
        ),
    ],
)
def test_bad_mqtt_settings_are_one_line_errors(
    bundle: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    result = zsad(
        "watch", str(tmp_path), "--bundle", str(bundle), "--out", str(tmp_path / "o"), *args
    )
    one_line_error(result, needle)
    assert not (tmp_path / "o").exists()
