"""A camera as a station's source, without a camera: frames durable before they are offered, what
a kill leaves pending finished on restart, triggers refused in one line, a camera lost and back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import one_line_error, zsad
from zsad.data.cameras.source import GrabbingSource
from zsad.data.cameras.store import FrameStore
from zsad.data.images import load_image
from zsad.station.camera import CameraConfig, CameraFeed
from zsad.station.line.hub import TriggerRefused


class FakeCamera(GrabbingSource):
    """Numbered flat frames: streamed, or one per software trigger as a GenICam camera does;
    after ``fail_after`` frames the grab raises (a camera unplugged)."""

    def __init__(self, trigger: str = "free", fail_after: int | None = None) -> None:
        super().__init__("fake://camera", trigger)
        self.fail_after = fail_after
        self.grabbed = 0
        self.fired = 0

    def _connect(self) -> None:
        self.hub.camera_triggered = self.trigger_mode == "software"

    def _fire(self) -> None:
        self.fired += 1

    def _grab(self, timeout_s: float) -> np.ndarray | None:
        if self.fail_after is not None and self.grabbed >= self.fail_after:
            raise OSError("device removed")
        if self.hub.camera_triggered and self.fired <= self.grabbed:
            time.sleep(0.01)
            return None
        self.grabbed += 1
        return np.full((8, 8, 3), self.grabbed % 256, np.uint8)

    def _disconnect(self) -> None:
        pass


def _feed(out: Path, opener, trigger: str = "free", keep: str = "ng") -> CameraFeed:
    config = CameraConfig("genicam://fake.cti", trigger=trigger, keep=keep)
    return CameraFeed(config, out, poll_s=0.05, echo=lambda line: None, open_camera=opener)


def _next_frame(feed: CameraFeed, tries: int = 100):
    for _ in range(tries):
        item = feed.next()
        if item is not None:
            return item
    raise AssertionError("no frame came")


def test_a_frame_is_on_disk_before_it_is_offered_and_carries_its_part_id(tmp_path: Path) -> None:
    feed = _feed(tmp_path, lambda: FakeCamera("software"), trigger="software").start(set())
    try:
        feed.trigger("P-7")
        frame = _next_frame(feed)
    finally:
        feed.close()
    assert frame.part_id == "P-7" and frame.path.parent == tmp_path / "frames/pending"
    np.testing.assert_array_equal(load_image(frame.path), frame.image)
    assert (frame.name, frame.size, frame.mtime_ns) == (
        frame.path.name,
        frame.path.stat().st_size,
        frame.path.stat().st_mtime_ns,
    )
    # NG is kept (the default policy), OK is not: the link is known before the record is written.
    assert feed.link(frame, "OK") is None
    link = feed.link(frame, "NG")
    assert link == f"frames/ng/{frame.path.name}" and not (tmp_path / link).exists()
    feed.file(frame, link)
    assert (tmp_path / link).is_file() and not frame.path.exists()


def test_a_restart_scores_unrecorded_frames_again_and_files_recorded_ones(tmp_path: Path) -> None:
    store = FrameStore(tmp_path, keep="all")
    recorded = tmp_path / store.write(np.zeros((8, 8, 3), np.uint8), "a-recorded", "P-1")
    dropped = tmp_path / store.write(np.ones((8, 8, 3), np.uint8), "b-recorded-not-kept")
    unscored = tmp_path / store.write(np.full((8, 8, 3), 9, np.uint8), "c-unscored", "P-3")
    journal = [
        {"id": 0, "schema": 2, "name": recorded.name, "frame": f"frames/ng/{recorded.name}"},
        {"id": 1, "schema": 2, "name": dropped.name, "frame": None},
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in journal))
    done = set()
    for path in (recorded, dropped):
        done.add((path.name, path.stat().st_size, path.stat().st_mtime_ns))
    feed = _feed(tmp_path, lambda: FakeCamera(), keep="all").start(done)
    try:
        # The kill came after these records: filed as the records say, never offered again.
        assert (tmp_path / "frames/ng" / recorded.name).is_file() and not recorded.exists()
        assert not dropped.exists()
        assert feed.backlog == 1
        again = feed.next()
        assert again is not None and again.path == unscored and again.part_id == "P-3"
        assert feed.backlog == 0
    finally:
        feed.close()


def test_a_camera_lost_is_said_once_reopened_with_backoff_and_said_back(tmp_path: Path) -> None:
    cameras = [FakeCamera("software", fail_after=1), None, None, FakeCamera("software")]

    def opener() -> GrabbingSource:
        camera = cameras.pop(0)
        if camera is None:
            raise OSError("no device")
        return camera

    feed = _feed(tmp_path, opener, trigger="software").start(set())
    try:
        feed.trigger("before")
        assert _next_frame(feed).part_id == "before"
        for _ in range(10):  # the next grab fails: the camera is away
            if feed.next() is None and feed.down_since is not None:
                break
        assert feed.describe()["camera"] == "unreachable"
        with pytest.raises(TriggerRefused, match="unreachable") as refused:
            feed.trigger("while-away")
        assert refused.value.busy
        lost = feed.notices()
        assert len(lost) == 1 and "device removed" in lost[0]
        for _ in range(200):  # reopened after 0.5 s, 1 s: two failures, then back
            feed.next()
            if feed.down_since is None:
                break
        assert feed.describe()["camera"] == "ok" and feed.outages == 1 and not cameras
        back = feed.notices()
        assert len(back) == 1 and "is back" in back[0]
        feed.trigger("after")
        assert _next_frame(feed).part_id == "after"
    finally:
        feed.close()


def test_a_free_running_camera_refuses_triggers_for_good(tmp_path: Path) -> None:
    feed = _feed(tmp_path, lambda: FakeCamera()).start(set())
    try:
        with pytest.raises(TriggerRefused, match="--trigger free") as refused:
            feed.trigger("P-1")
        assert not refused.value.busy
    finally:
        feed.close()


@pytest.mark.slow
def test_camera_options_are_checked_in_one_line(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    secret = "hunter2"
    result = zsad("watch", "--source", f"rtsp://op:{secret}@127.0.0.1/cam", "--out", out)
    one_line_error(result, "--source", "--camera-password-file")
    assert secret not in result.stderr
    result = zsad("watch", str(tmp_path), "--camera-set", "ExposureTime=5000", "--out", out)
    one_line_error(result, "--camera-set", "only with a camera --source")
    result = zsad("watch", "--source", "genicam://x.cti", "--camera-set", "Exposure", "--out", out)
    one_line_error(result, "camera setting 'Exposure'", "NAME=VALUE")
    result = zsad("watch", "--source", "genicam://x.cti", "--trigger", "sometimes", "--out", out)
    one_line_error(result, "trigger 'sometimes'")
    result = zsad("watch", "--out", out)
    one_line_error(result, "IN_DIR", "--source")
