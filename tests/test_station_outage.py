"""A station whose encoder is remote and goes away: it waits and retries, says so in
status.json, never blames the frame, and a stop during the outage leaves the frame for the next
run. The encoder here fails on command; the real server is in test_triton_server.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from helpers import assert_each_once, read_status, wait_until, write_frame
from zsad.api.detector import Detector
from zsad.api.scorers import HeadclipScoring, MethodOptions
from zsad.errors import ServiceUnavailable
from zsad.formats.artifact import load_artifact
from zsad.formats.bundle import Bundle
from zsad.runtime.open import open_backend
from zsad.station.frames import HotFolder
from zsad.station.poison import IN_PROGRESS
from zsad.station.station import Station, StationOptions


class Flaky:
    """A backend that raises ServiceUnavailable while ``down`` is set, like a remote encoder."""

    def __init__(self, backend: object) -> None:
        self.inner = backend
        self.down = threading.Event()
        self.failures = 0
        for name in ("image_size", "mean", "std", "outputs", "name"):
            setattr(self, name, getattr(backend, name))

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        if self.down.is_set():
            self.failures += 1
            raise ServiceUnavailable("--triton grpc://127.0.0.1:1: server unreachable (test)")
        return self.inner.run(pixels)


def _station(bundle: Path, backend: Flaky, in_dir: Path, out: Path) -> Station:
    artifact = load_artifact(Bundle.load(bundle).file("calibration.safetensors"))
    headclip = HeadclipScoring.from_artifact(artifact, 56, MethodOptions())
    detector = Detector("headclip", backend, headclip=headclip)  # type: ignore[arg-type]
    return Station(
        detector.stream(),
        lambda done: HotFolder(in_dir, done, retry_s=1.0, exclude=out),
        StationOptions(
            out=out, poll_s=0.02, status_interval_s=0.05, overlays=False, echo=lambda _: None
        ),
    )


def test_an_outage_is_waited_out_and_reported(headclip_bundle: Path, tmp_path: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    backend = Flaky(open_backend(headclip_bundle, device="cpu"))
    station = _station(headclip_bundle, backend, in_dir, out)
    runner = threading.Thread(target=station.run)
    backend.down.set()
    runner.start()
    try:
        write_frame(in_dir / "a.png", 0)
        wait_until(lambda: backend.failures >= 2, "retries")  # 0.5 s, then 1 s apart
        time.sleep(0.1)  # inside the 1 s wait before the third try
        status = read_status(out)
        assert status["state"] == "encoder-unreachable" and status["encoder"] == "unreachable"
        assert status["encoder_outages"] == 1 and "server unreachable" in status["encoder_error"]
        assert not (out / IN_PROGRESS).exists()  # waiting is not the frame's fault
        backend.down.clear()
        write_frame(in_dir / "b.png", 1)
        wait_until(lambda: read_status(out).get("this_run", {}).get("scored") == 2, "both frames")
        assert (
            read_status(out)["encoder"] == "ok" and read_status(out)["encoder_down_since"] is None
        )
    finally:
        station._stop.set()
        runner.join(timeout=30)
    assert_each_once(out, ["a.png", "b.png"])


def test_a_stop_during_an_outage_leaves_the_frame_for_the_next_run(
    headclip_bundle: Path, tmp_path: Path
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    write_frame(in_dir / "a.png", 0)
    backend = Flaky(open_backend(headclip_bundle, device="cpu"))
    backend.down.set()
    station = _station(headclip_bundle, backend, in_dir, out)
    runner = threading.Thread(target=station.run)
    runner.start()
    wait_until(lambda: backend.failures >= 1, "the first failure")
    station._stop.set()  # what SIGINT/SIGTERM do
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert (out / "results.jsonl").read_text() == ""  # nothing journalled, nothing rejected
    assert not (out / IN_PROGRESS).exists()

    backend.down.clear()
    again = _station(headclip_bundle, backend, in_dir, out)
    again.options.idle_exit_s = 0.3
    again.run()
    assert_each_once(out, ["a.png"])
