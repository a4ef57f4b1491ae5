"""`zsad watch --source` against camera simulators: the genicam wheel's GenTL producer through
harvesters (software triggers from HTTP, MQTT and OPC UA with part ids; kill -9 and restart;
frames kept within a budget) and GStreamer's RTSP server on 127.0.0.1 (free run, the server
gone and back)."""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    free_port,
    popen_watch,
    read_status,
    require_service,
    station_records,
    stop_station,
    wait_for_lines,
    wait_until,
)
from test_camera_genicam_sim import URI
from test_camera_rtsp import MISSING as RTSP_MISSING
from test_camera_rtsp import SERVER as RTSP_SERVER
from test_camera_rtsp import SYSTEM_PYTHON
from test_line_http import _call
from zsad.bench.line import listening

pytestmark = pytest.mark.slow
TOKEN = "trigger-token"
TOPIC = "plant/line1/cam"


def _watch(out: Path, bundle: Path, source: str, *args: str) -> subprocess.Popen[str]:
    return popen_watch(
        "--source", source, "--out", str(out), "--bundle", str(bundle), "--bank", "3",
        "--status-every", "0.5", *args,
    )  # fmt: skip


def _frames_on_disk(out: Path, folder: str) -> set[str]:
    return {p.name for p in (out / "frames" / folder).glob("*.png")}


def _assert_each_frame_scored_once(out: Path) -> list[dict]:
    """Every frame written is scored exactly once: one record per frame name, arrival indices
    0..n-1, every link resolves, no frame left pending and none kept without a record."""
    records = [r for r in station_records(out) if r["index"] is not None]
    names = [r["name"] for r in records]
    assert len(names) == len(set(names)), "a frame was scored twice"
    assert sorted(r["index"] for r in records) == list(range(len(records)))
    assert _frames_on_disk(out, "pending") == set()
    kept = {f"frames/{v}/{n}" for v in ("ok", "ng") for n in _frames_on_disk(out, v)}
    assert kept <= {r["frame"] for r in records}
    return records


def test_software_triggers_from_http_mqtt_and_opcua_carry_part_ids_into_records(
    bundle: Path, tmp_path: Path
) -> None:
    import paho.mqtt.publish as publish
    from asyncua import Client, ua

    from test_line_mqtt import MOSQUITTO, Broker

    require_service(Path(MOSQUITTO).exists(), "mosquitto is not installed (Debian: mosquitto)")
    broker = Broker(tmp_path / "broker", free_port())
    broker.start()
    out, token = tmp_path / "out", tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    http_port, opcua_url = free_port(), f"opc.tcp://127.0.0.1:{free_port()}"
    station = _watch(
        out, bundle, URI, "--trigger", "software", "--camera-set", "AcquisitionFrameRate=100",
        "--keep-frames", "all", "--http", f"127.0.0.1:{http_port}", "--http-token-file",
        str(token), "--mqtt", f"mqtt://127.0.0.1:{broker.port}", "--mqtt-topic", TOPIC,
        "--opcua", opcua_url, "--opcua-security", "none",
    )  # fmt: skip
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    journal = out / "results.jsonl"

    def http(part: str) -> None:
        body = json.dumps({"part_id": part}).encode()
        assert _call(http_port, "POST", "/api/trigger", body, **bearer)[0] == 202

    def mqtt(part: str) -> None:
        publish.single(f"{TOPIC}/trigger", part, qos=1, hostname="127.0.0.1", port=broker.port)

    def opcua(part: str) -> None:
        async def call() -> None:
            async with Client(opcua_url, timeout=30) as client:
                ns = await client.get_namespace_index("urn:zsad:station")
                node = client.get_node(ua.NodeId("Station", ns))
                await node.call_method(ua.QualifiedName("Trigger", ns), ua.Variant(part))

        asyncio.run(call())

    latencies: dict[str, list[float]] = {"http": [], "mqtt": [], "opcua": []}
    try:
        wait_until(lambda: read_status(out).get("camera") == "ok", "the camera to open")
        wait_until(lambda: listening(http_port), "the HTTP API")
        sent = []
        for number in range(4):
            for name, trigger in (("http", http), ("mqtt", mqtt), ("opcua", opcua)):
                part = f"{name}-{number}"
                started = time.monotonic()
                trigger(part)
                sent.append(part)
                if len(sent) >= 3:  # the first three are the warm-up set, scored together
                    wait_for_lines(journal, len(sent), station, timeout=60)
                if len(sent) > 3:
                    latencies[name].append(time.monotonic() - started)
        wait_until(lambda: read_status(out).get("triggers") == len(sent), "the status")
        status = read_status(out)
    finally:
        stderr = stop_station(station)
        broker.kill()
    records = _assert_each_frame_scored_once(out)
    assert sorted(r["part_id"] for r in records) == sorted(sent), stderr
    assert all((out / r["frame"]).is_file() for r in records)  # --keep-frames all
    assert status["trigger"] == "software" and status["camera"] == "ok"
    # One frame per trigger, carried through the whole station: a few tens of ms in CI.
    for name, seconds in latencies.items():  # the OPC UA figure includes opening a session
        print(f"{name} trigger to record: p50 {statistics.median(seconds) * 1e3:.0f} ms")


def test_kill_9_mid_run_then_restart_scores_every_frame_written_exactly_once(
    bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ("--camera-set", "AcquisitionFrameRate=20", "--keep-frames", "all")
    for _ in range(2):  # kill twice, somewhere in a frame's way from the camera to the record
        station = _watch(out, bundle, URI, *args)
        before = station_records(out) if (out / "results.jsonl").exists() else []
        wait_for_lines(out / "results.jsonl", len(before) + 8, station)
        station.send_signal(signal.SIGKILL)
        station.wait(30)
    station = _watch(out, bundle, URI, *args)
    started = time.monotonic()
    count = len(station_records(out))
    wait_for_lines(out / "results.jsonl", count + 10, station)
    stop_station(station)
    seconds = time.monotonic() - started
    records = _assert_each_frame_scored_once(out)
    assert all((out / r["frame"]).is_file() for r in records)  # --keep-frames all
    print(f"{len(records) - count} frames in {seconds:.1f} s after the restart")


def test_ng_frames_are_kept_within_the_budget_oldest_first(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    budget_bytes = 30_000  # a handful of the simulator's frames
    station = _watch(
        out, bundle, URI, "--camera-set", "AcquisitionFrameRate=20", "--keep-frames", "ng",
        "--threshold", "-1", "--frames-budget-gb", str(budget_bytes / 1e9),
    )  # fmt: skip
    wait_for_lines(out / "results.jsonl", 20, station)
    stop_station(station)
    records = _assert_each_frame_scored_once(out)
    assert {r["decision"] for r in records} == {"NG"}  # every score is above -1
    kept = sorted(_frames_on_disk(out, "ng"))
    assert _frames_on_disk(out, "ok") == set()
    assert 0 < len(kept) < len(records)
    assert sum((out / "frames/ng" / name).stat().st_size for name in kept) <= budget_bytes
    newest = sorted(r["name"] for r in records)[-len(kept) :]
    assert kept == newest  # the oldest went first


@pytest.fixture
def rtsp() -> Any:
    require_service(RTSP_MISSING is None, f"RTSP tests: {RTSP_MISSING}")
    port = free_port()
    servers: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [SYSTEM_PYTHON, str(RTSP_SERVER), str(port), "160", "120", "10"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        servers.append(process)
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        return process

    try:
        yield f"rtsp://127.0.0.1:{port}/test", start
    finally:
        for process in servers:
            process.kill()
            process.wait()


def test_rtsp_free_run_scores_frames_and_rides_out_the_server_going_away(
    rtsp: Any, bundle: Path, tmp_path: Path
) -> None:
    url, start = rtsp
    server = start()
    out = tmp_path / "out"
    station = _watch(out, bundle, url, "--keep-frames", "none")
    journal = out / "results.jsonl"
    try:
        wait_for_lines(journal, 8, station)
        server.kill()
        server.wait()
        wait_until(lambda: read_status(out).get("state") == "camera-unreachable", "the outage")
        down = read_status(out)
        count = len(station_records(out))
        start()
        wait_for_lines(journal, count + 5, station, timeout=90)
        back = read_status(out)
    finally:
        stderr = stop_station(station)
    assert down["camera"] == "unreachable" and down["camera_down_since"] and down["camera_error"]
    assert back["camera"] == "ok" and back["camera_outages"] == 1
    assert stderr.count("camera unreachable") == 1 and stderr.count("is back") == 1, stderr
    records = _assert_each_frame_scored_once(out)
    assert {r["frame"] for r in records} == {None}  # --keep-frames none
    assert _frames_on_disk(out, "ok") | _frames_on_disk(out, "ng") == set()
