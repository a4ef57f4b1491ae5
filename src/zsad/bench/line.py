"""`zsad bench line`: what the line interfaces cost a station, and how late they deliver.

The same generated frames go through a station with no sinks and with every sink on (MQTT to a
mosquitto the bench starts, OPC UA, HTTP with a live-event client and a status poller standing in
for the operator page), in alternating runs, so both figures come from the same machine state.
Delivery latency is the time from a record's journal timestamp to its arrival at a subscriber,
over all records but the first few of each run.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from zsad.api.detector import Detector
from zsad.api.encoders import EncoderSpec
from zsad.api.scorers import MethodOptions
from zsad.bench import measure as bm
from zsad.bench.report import say, warn, write_report
from zsad.bench.station import _frames
from zsad.errors import ZsadError
from zsad.formats.methods import DEFAULT_BANK
from zsad.scoring.pipeline import SetScoringConfig
from zsad.station.frames import HotFolder
from zsad.station.line.config import HttpConfig, LineConfig, MqttConfig, OpcuaConfig
from zsad.station.line.opcua import NAMESPACE
from zsad.station.line.sinks import build_sinks
from zsad.station.station import Station, StationOptions

SETTLE = 5  # records per run left out of the latency figures


def bench_line(
    out: Path,
    *,
    frames: int = 200,
    repeats: int = 3,
    bank: int = DEFAULT_BANK,
    model: str = "zsad-tiny",
    image_size: int = 224,
    seed: int = 0,
) -> dict[str, Any]:
    """Station images/s with sinks off and on, and sink latency p50/p99; writes OUT/bench.*."""
    spec = EncoderSpec(model, None, "random", image_size, "cpu", None, None)
    options = MethodOptions(SetScoringConfig())
    detector = Detector.from_spec(spec, None, options=options, progress=False)
    env = bm.environment("cpu")
    work = Path(tempfile.mkdtemp(prefix="zsad-bench-line-"))
    broker = _Broker(work / "broker")
    runs: dict[str, list[float]] = {"off": [], "on": []}
    latency: dict[str, list[float]] = {}
    try:
        _frames(work / "in", frames, 25, seed)
        broker.start()
        with detector:
            for repeat in range(repeats):
                for mode in ("off", "on"):
                    result = _run_once(detector, work, bank, broker, mode == "on", repeat)
                    runs[mode].append(result["images_per_s"])
                    for sink, values in result["latency_ms"].items():
                        latency.setdefault(sink, []).extend(values)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    body = _body(runs, latency)
    config = {"frames": frames, "repeats": repeats, "bank": bank, "model": model,
              "image_size": image_size, "mqtt": broker.available}  # fmt: skip
    payload = write_report(out, "line", env, config, body, _markdown(config, body), [])
    say(
        f"sinks off {body['images_per_s']['off']} img/s, on {body['images_per_s']['on']} img/s "
        f"(ratio {body['on_over_off']})"
    )
    return payload


def _run_once(
    detector: Any, work: Path, bank: int, broker: _Broker, sinks_on: bool, repeat: int
) -> dict[str, Any]:
    out = work / f"out-{repeat}-{'on' if sinks_on else 'off'}"
    clients: list[_Listener] = []
    sinks = []
    if sinks_on:
        http_port, opcua_port = _free_port(), _free_port()
        line = LineConfig(
            mqtt=MqttConfig(f"mqtt://127.0.0.1:{broker.port}", f"bench/{repeat}")
            if broker.available
            else None,
            opcua=OpcuaConfig(f"opc.tcp://127.0.0.1:{opcua_port}", "none"),
            http=HttpConfig(f"127.0.0.1:{http_port}"),
        )
        sinks = build_sinks(line)
        clients.append(_SseListener(http_port))
        clients.append(_OpcuaListener(f"opc.tcp://127.0.0.1:{opcua_port}"))
        if broker.available:
            clients.append(_MqttListener(broker.port, f"bench/{repeat}/results"))
    options = StationOptions(
        out=out, overlays=True, status_interval_s=1.0, idle_exit_s=1.0, sinks=sinks,
        echo=lambda _line: None,
    )  # fmt: skip
    station = Station(
        detector.stream(bank), lambda done: HotFolder(work / "in", done, exclude=out), options
    )
    for client in clients:
        client.start()
    station.run()
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    time.sleep(0.5)  # let the subscribers receive the last records
    for client in clients:
        client.stop()
    # The subscribers connect while the station starts: the first records may predate them.
    written = {r["id"]: _epoch(r["time"]) for r in records[SETTLE:]}
    return {
        "images_per_s": _stream_rate(records),
        "latency_ms": {c.name: c.latencies_ms(written) for c in clients},
    }


def _stream_rate(records: list[dict[str, Any]]) -> float:
    """Images/s over the streamed records, first to last: the station's own pace, without
    start-up, the warm-up set (scored at once) and the idle exit."""
    times = [_epoch(r["time"]) for r in records if r.get("phase") == "stream"]
    if len(times) < 2 or times[-1] <= times[0]:
        raise ZsadError("bench line: too few streamed images; give more --frames than --bank")
    return (len(times) - 1) / (times[-1] - times[0])


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class _Broker:
    """A mosquitto on 127.0.0.1, when one is installed."""

    def __init__(self, folder: Path) -> None:
        self.binary = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
        self.available = self.binary is not None
        self.folder = folder
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not self.available:
            warn("mosquitto not found: MQTT is left out of the sinks-on runs")
            return
        import getpass

        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\nuser {getpass.getuser()}\nallow_anonymous true\n"
            "log_dest none\n"
        )
        self.process = subprocess.Popen([str(self.binary), "-c", str(config)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if listening(self.port):
                return
            time.sleep(0.05)
        raise ZsadError("bench line: mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


class _Listener:
    """A subscriber that notes when each record id arrives."""

    name = ""

    def __init__(self) -> None:
        self.arrived: dict[int, float] = {}
        self._stop = threading.Event()

    def start(self) -> None:
        """Start listening (before the station runs)."""
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop listening."""
        self._stop.set()

    def latencies_ms(self, written: dict[int, float]) -> list[float]:
        """Arrival minus journal time, per record that arrived."""
        return [(t - written[i]) * 1e3 for i, t in self.arrived.items() if i in written]


class _MqttListener(_Listener):
    name = "mqtt"

    def __init__(self, port: int, topic: str) -> None:
        super().__init__()
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_message = lambda _c, _d, m: self._note(json.loads(m.payload)["id"])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _note(self, record_id: int) -> None:
        self.arrived.setdefault(record_id, time.time())

    def start(self) -> None:
        """The client runs on paho's thread from construction on."""

    def stop(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


class _SseListener(_Listener):
    name = "http (server-sent events)"

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def _listen(self) -> None:
        import http.client

        last: int | None = None
        while not self._stop.is_set():
            headers = {} if last is None else {"Last-Event-ID": str(last)}
            try:
                # No read timeout: the server sends keep-alives; stop() ends a daemon thread.
                connection = http.client.HTTPConnection("127.0.0.1", self.port)
                connection.request("GET", "/api/events", headers=headers)
                response = connection.getresponse()
                while not self._stop.is_set():
                    line = response.readline()
                    if not line:
                        break
                    if line.startswith(b"id:"):
                        last = int(line[3:].strip())
                        self.arrived.setdefault(last, time.time())
            except OSError:
                time.sleep(0.05)  # the server is not up yet


class _OpcuaListener(_Listener):
    name = "opc ua (10 ms publishing)"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def _listen(self) -> None:
        import asyncio

        asyncio.run(self._subscribe())

    async def _subscribe(self) -> None:
        import asyncio

        from asyncua import Client, ua

        listener = self

        class Handler:
            def datachange_notification(self, _node: Any, value: Any, _data: Any) -> None:
                if isinstance(value, int) and value >= 0:
                    listener.arrived.setdefault(value, time.time())

        deadline = time.monotonic() + 30
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                async with Client(self.url, timeout=5) as client:
                    index = await client.get_namespace_index(NAMESPACE)
                    node = client.get_node(ua.NodeId("Station.LastResult.ResultId", index))
                    subscription = await client.create_subscription(10, Handler())
                    await subscription.subscribe_data_change(node, queuesize=1000)
                    while not self._stop.is_set():
                        await asyncio.sleep(0.05)
                    return
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.05)  # the server is not up yet


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "n": 0}
    array = np.asarray(values)
    return {
        "p50": round(float(np.percentile(array, 50)), 2),
        "p99": round(float(np.percentile(array, 99)), 2),
        "n": len(values),
    }


def _body(runs: dict[str, list[float]], latency: dict[str, list[float]]) -> dict[str, Any]:
    median: Callable[[list[float]], float] = lambda v: round(float(np.median(v)), 2)  # noqa: E731
    return {
        "images_per_s": {mode: median(values) for mode, values in runs.items()},
        "runs": runs,
        "on_over_off": round(median(runs["on"]) / median(runs["off"]), 3),
        "latency_ms": {sink: _stats(values) for sink, values in latency.items()},
    }


def _markdown(config: dict[str, Any], body: dict[str, Any]) -> str:
    text = (
        f"{config['frames']} frames, {config['model']} at {config['image_size']} px, bank "
        f"{config['bank']}, overlays on; {config['repeats']} alternating runs each, medians; "
        "images/s over the streamed images (after the warm-up set).\n\n"
        "| sinks | images/s | runs |\n|---|---|---|\n"
    )
    for mode in ("off", "on"):
        runs = ", ".join(f"{v:.2f}" for v in body["runs"][mode])
        text += f"| {mode} | {body['images_per_s'][mode]} | {runs} |\n"
    text += f"\nOn / off: {body['on_over_off']}.\n\n"
    text += (
        "| delivery (journal time -> subscriber) | p50 ms | p99 ms | records |\n|---|---|---|---|\n"
    )
    for sink, stats in body["latency_ms"].items():
        text += f"| {sink} | {stats['p50']} | {stats['p99']} | {stats['n']} |\n"
    return text
