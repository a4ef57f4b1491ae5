"""RTSP acquisition through PyAV from a real RTSP server on 127.0.0.1: GStreamer's RTSP server,
started by the test, serving videotestsrc as VP8."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest

from camera_sim import RTSP_SERVER, SYSTEM_PYTHON, rtsp_missing
from helpers import free_port, require_service
from zsad.data.cameras.uri import open_source
from zsad.errors import ZsadError

pytestmark = pytest.mark.slow

MISSING = rtsp_missing()
require_service(MISSING is None, f"RTSP tests: {MISSING}")


@pytest.fixture
def server() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """rtsp://127.0.0.1:PORT/test served at 25 frames/s until the test ends."""
    port = free_port()
    process = subprocess.Popen(
        [SYSTEM_PYTHON, str(RTSP_SERVER), str(port), "160", "120", "25"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield f"rtsp://127.0.0.1:{port}/test", process
    finally:
        process.kill()
        process.wait()


def test_free_run_reads_decoded_rgb_frames(server) -> None:
    url, _ = server
    with open_source(url) as source:
        read = [source.read(10) for _ in range(15)]
    frames = [f for f in read if f is not None]
    assert [f.number for f in frames] == list(range(15))
    first, last = frames[0], frames[-1]
    assert first.image.shape == (120, 160, 3) and first.image.dtype == np.uint8
    assert not np.array_equal(first.image, last.image)  # the test pattern's ball moves
    assert first.timestamp <= last.timestamp


def test_a_slow_reader_gets_the_newest_frame_and_the_rest_are_dropped(server) -> None:
    url, _ = server
    with open_source(url) as source:
        assert source.read(10) is not None
        time.sleep(1.0)  # 25 frames arrive meanwhile
        assert source.read(10) is not None
        assert source.read(0) is None  # nothing older was queued
        assert source.dropped >= 10


def test_a_software_trigger_is_answered_by_one_fresh_frame_with_its_part_id(server) -> None:
    url, _ = server
    with open_source(url, trigger="software") as source:
        time.sleep(0.5)  # the stream runs; untriggered frames are dropped
        assert source.read(0.2) is None
        answered = []
        for part in ("P-1", "P-2", "P-3"):
            asked = time.time()
            source.trigger(part)
            frame = source.read(10)
            assert frame is not None and frame.timestamp >= asked
            answered.append(frame.part_id)
            time.sleep(0.1)
        assert source.read(0.3) is None
    assert answered == ["P-1", "P-2", "P-3"]


def test_a_server_that_stops_is_reported_to_the_reader(server) -> None:
    url, process = server
    with open_source(url, timeout_s=2) as source:
        assert source.read(10) is not None
        process.kill()
        with pytest.raises(
            ZsadError, match=r"^rtsp://127\.0\.0\.1:\d+/test: the stream (stopped|ended)"
        ):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                source.read(1)


def test_a_server_that_does_not_answer_times_out_in_one_line() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"rtsp://127.0.0.1:{silent.getsockname()[1]}/x"
        started = time.monotonic()
        with pytest.raises(ZsadError, match=r"no answer within 1 s \(is the camera or server up"):
            open_source(url, timeout_s=1).open()
        assert time.monotonic() - started < 5


def test_a_refused_connection_and_an_unknown_path_are_named(server) -> None:
    url, _ = server
    with pytest.raises(ZsadError, match=r"cannot open the stream \(.*Connection refused"):
        open_source(f"rtsp://127.0.0.1:{free_port()}/test", timeout_s=2).open()
    with pytest.raises(ZsadError, match=r"cannot open the stream \(.*404 Not Found"):
        open_source(url.replace("/test", "/other"), timeout_s=2).open()
