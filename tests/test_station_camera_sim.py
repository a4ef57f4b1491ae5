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

from camera_sim import (
    GENTL_MISSING,
    GENTL_SIMULATOR,
    RTSP_SERVER,
    SYSTEM_PYTHON,
    rtsp_missing,
)
from camera_sim import GENTL_URI as URI
from helpers import (
    MOSQUITTO,
    Broker,
    free_port,
    http_call,
    one_line_error,
    popen_watch,
    read_status,
    require_service,
    station_records,
    stop_station,
    wait_for_lines,
    wait_until,
    zsad,
)
from zsad.bench.line import listening
from zsad.data.cameras.store import read_part_id

pytestmark = pytest.mark.slow
TOKEN = "trigger-token"
TOPIC = "plant/line1/cam"


@pytest.fixture
def gentl() -> None:
    """The GenTL simulator is there (the tests using it read URI)."""
    require_service(GENTL_SIMULATOR is not None, GENTL_MISSING)


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
    gentl: None, bundle: Path, tmp_path: Path
) -> None:
    import paho.mqtt.publish as publish
    from asyncua import Client, ua

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
        assert http_call(http_port, "POST", "/api/trigger", body, **bearer)[0] == 202

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
    gentl: None, bundle: Path, tmp_path: Path
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


def test_ng_frames_are_kept_within_the_budget_oldest_first(
    gentl: None, bundle: Path, tmp_path: Path
) -> None:
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
    require_service(rtsp_missing() is None, f"RTSP tests: {rtsp_missing()}")
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


def test_every_trigger_taken_gets_a_record_even_one_the_camera_does_not_answer(
    gentl: None, bundle: Path, tmp_path: Path
) -> None:
    out, token = tmp_path / "out", tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    port = free_port()
    # One frame a second against a 0.3 s timeout: of a burst of triggers, one is answered at most.
    station = _watch(
        out, bundle, URI, "--trigger", "software", "--camera-set", "AcquisitionFrameRate=1",
        "--trigger-timeout", "0.3", "--http", f"127.0.0.1:{port}", "--http-token-file",
        str(token),
    )  # fmt: skip
    sent = [f"burst-{number}" for number in range(5)]
    try:
        wait_until(lambda: read_status(out).get("camera") == "ok", "the camera to open")
        wait_until(lambda: listening(port), "the HTTP API")
        for part in sent:
            body = json.dumps({"part_id": part}).encode()
            answer = http_call(port, "POST", "/api/trigger", body, Authorization=f"Bearer {TOKEN}")
            assert answer[0] == 202
        wait_for_lines(out / "results.jsonl", len(sent) - 1, station)
        time.sleep(0.5)  # every trigger's time is up
    finally:
        stderr = stop_station(station)
    rejected = [r for r in station_records(out) if r["decision"] == "rejected"]
    assert len(rejected) >= len(sent) - 1 and stderr.count("not answered") == len(rejected)
    assert all("no frame came within 0.3 s" in r["error"] for r in rejected)
    # The warm-up holds a frame scored before the stop: it waits on disk, its part id with it.
    answered = [read_part_id(path) for path in (out / "frames/pending").glob("*.png")]
    assert sorted([r["part_id"] for r in rejected] + answered) == sorted(sent)


def test_a_camera_missing_at_start_is_waited_for_a_wrong_producer_stops_at_once(
    rtsp: Any, bundle: Path, tmp_path: Path
) -> None:
    wrong = zsad(
        "watch", "--source", f"genicam://{tmp_path}/no-such-producer.cti", "--bundle",
        str(bundle), "--out", str(tmp_path / "wrong"),
    )  # fmt: skip
    one_line_error(wrong, "no GenTL producer")
    url, start = rtsp
    out = tmp_path / "out"
    station = _watch(out, bundle, url, "--keep-frames", "none")
    try:
        wait_until(lambda: read_status(out).get("state") == "camera-unreachable", "the wait")
        waiting = read_status(out)
        start()
        wait_for_lines(out / "results.jsonl", 5, station, timeout=90)
        wait_until(lambda: read_status(out).get("camera") == "ok", "the status")
    finally:
        stderr = stop_station(station)
    assert waiting["camera_error"] and waiting["camera_outages"] == 1
    assert stderr.count("camera unreachable") == 1 and stderr.count("is back") == 1, stderr


def test_bench_station_with_a_camera_source_reports_ratios_to_the_hot_folder(
    gentl: None, bundle: Path, tmp_path: Path
) -> None:
    args = ("bench", "station", "--out", str(tmp_path), "--bundle", str(bundle), "--bank", "4",
            "--source", URI, "--camera-set", "Width=128", "--camera-set", "Height=128",
            "--camera-set", "AcquisitionFrameRate=200")  # fmt: skip
    one_line_error(zsad(*args, "--frames", "10", "--triggers", "5", "--bank", "12"), "past the")
    result = zsad(*args, "--frames", "12", "--triggers", "5")
    assert result.returncode == 0, result.stderr
    bench = json.loads((tmp_path / "bench.json").read_text())
    runs = {(run["source"], run["overlays"]): run for run in bench["runs"]}
    assert set(runs) == {(s, o) for s in ("hot folder", URI) for o in (True, False)}
    for run in runs.values():
        assert run["frames"] == 12 and run["frames_per_s"] > 0
        assert 0 < run["latency_ms"]["p50"] <= run["latency_ms"]["p99"]
    ratio = bench["camera_vs_hot_folder"]["True"]
    camera, hot = runs[(URI, True)], runs[("hot folder", True)]
    assert ratio["frames_per_s"] == round(camera["frames_per_s"] / hot["frames_per_s"], 2)
    assert "| camera / hot folder |" in (tmp_path / "bench.md").read_text()
