"""Run inside a network namespace of its own (``unshare -n``): Aravis's fake GigE Vision camera on
127.0.0.1, then zsad's aravis:// source and a station against it.

``python aravis_in_netns.py OUT BUNDLE`` brings ``lo`` up, starts ``arv-fake-gv-camera-0.8``,
and prints one JSON line of what it saw; the station's journal is left in OUT. GigE Vision
discovery broadcasts on every interface, so this never runs on the machine's own network: the
test starts it only through ``unshare``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

DEVICE = "Aravis-Fake-GV01"  # the id Aravis gives the fake camera (serial GV01)
URI = f"aravis://{DEVICE}"
TRIGGERS = 6


def wait_for_camera() -> None:
    """Until Aravis discovers the fake camera on the loopback (it takes a moment to listen)."""
    import gi

    gi.require_version("Aravis", "0.8")
    from gi.repository import Aravis

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        Aravis.update_device_list()
        if DEVICE in [Aravis.get_device_id(i) for i in range(Aravis.get_n_devices())]:
            return
        time.sleep(0.2)
    sys.exit(f"no {DEVICE} on the loopback after 20 s")


def error_of(uri: str, settings: dict[str, str] | None = None) -> str:
    """The one-line error opening ``uri`` with ``settings`` gives."""
    from zsad.data.cameras.uri import open_source
    from zsad.errors import ZsadError

    try:
        open_source(uri, settings).open()
    except ZsadError as exc:
        return str(exc)
    return "(opened)"


def source_checks() -> dict[str, Any]:
    """Free run, then a software trigger per part, on the bare source."""
    from zsad.data.cameras.uri import open_source

    with open_source(URI, {"AcquisitionFrameRate": "20"}) as source:
        free = [source.read(5) for _ in range(5)]
    settings = {"Width": "64", "Height": "48", "PixelFormat": "RGB8"}
    with open_source(URI, settings, trigger="software") as source:
        idle = source.read(0.5)
        answers, latencies = [], []
        for part in ("A-1", "A-2", "A-3"):
            asked = time.monotonic()
            source.trigger(part)
            answers.append(source.read(5))
            latencies.append(time.monotonic() - asked)
        extra = source.read(0.5)
    return {
        "free_numbers": [f and f.number for f in free],
        "idle": idle is not None,
        "parts": [f and f.part_id for f in answers],
        "shapes": [list(f.image.shape) if f else None for f in answers],
        "colours": [int(f.image.reshape(-1, 3).std(axis=0).max()) if f else 0 for f in answers],
        "latency_max_s": max(latencies),
        "extra": extra is not None,
    }


def station_run(out: Path, bundle: Path) -> dict[str, Any]:
    """A station on the camera (BayerRG8, software trigger), one trigger every 0.3 s."""
    from zsad.api.detector import Detector
    from zsad.scoring.pipeline import SetScoringConfig
    from zsad.station.camera import CameraConfig, CameraFeed
    from zsad.station.station import Station, StationOptions

    detector = Detector.from_bundle(bundle, device="cpu", scoring=SetScoringConfig(device="cpu"))
    settings = {"Width": "64", "Height": "64", "PixelFormat": "BayerRG8"}
    config = CameraConfig(URI, settings, "software", keep="all")
    feed = CameraFeed(config, out, poll_s=0.05, echo=lambda line: None)
    options = StationOptions(out=out, poll_s=0.05, idle_exit_s=3.0, echo=lambda line: None)
    station = Station(detector.stream(3), feed.start, options)
    summary: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: summary.update(station.run()))
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while feed.camera is None and time.monotonic() < deadline:
            time.sleep(0.05)
        for number in range(TRIGGERS):
            feed.trigger(f"T-{number}")
            time.sleep(0.3)
        worker.join(120)
    finally:
        feed.close()
    return {"triggers": feed.triggers, "stopped_by": summary.get("stopped_by")}


def loss_check(camera: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Kill the camera mid-stream: how long until ``read`` says so, and what it says."""
    from zsad.data.cameras.uri import open_source
    from zsad.errors import ZsadError

    with open_source(URI, {"AcquisitionFrameRate": "20"}) as source:
        source.read(5)
        camera.kill()
        killed = time.monotonic()
        while time.monotonic() - killed < 20:
            try:
                source.read(1)
            except ZsadError as exc:
                return {"lost_after_s": time.monotonic() - killed, "lost": str(exc)}
    return {"lost_after_s": None, "lost": None}


def main() -> None:
    """Bring up lo, start the fake camera, run the checks, print what they saw."""
    out, bundle = Path(sys.argv[1]), Path(sys.argv[2])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    camera = subprocess.Popen(
        ["arv-fake-gv-camera-0.8", "-i", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_camera()
        seen = {
            "missing": error_of("aravis://no-such-camera"),
            "unknown": error_of(URI, {"NoSuchFeature": "1"}),
            "enum": error_of(URI, {"PixelFormat": "YUV"}),
            "integer": error_of(URI, {"Width": "abc"}),
            **source_checks(),
            **station_run(out, bundle),
            **loss_check(camera),
        }
    finally:
        camera.kill()
        camera.wait()
    print(json.dumps(seen))


main()
