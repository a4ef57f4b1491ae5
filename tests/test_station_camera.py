"""A camera as a station's source, without a camera: frames durable before they are offered, what
a kill leaves pending finished on restart, triggers refused in one line, a camera lost and back."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import one_line_error, station_records, wait_until, zsad
from zsad.api.detector import Detector
from zsad.data.cameras.source import CameraSettingError, GrabbingSource
from zsad.data.cameras.store import FrameStore
from zsad.data.images import load_image
from zsad.errors import ZsadError
from zsad.scoring.pipeline import SetScoringConfig
from zsad.station.camera import CameraConfig, CameraFeed
from zsad.station.frames import Unanswered
from zsad.station.line.hub import TriggerRefused
from zsad.station.station import Station, StationOptions


class FakeCamera(GrabbingSource):
    """Numbered flat frames: streamed, or one per software trigger as a GenICam camera does;
    after ``fail_after`` frames or once ``unplugged`` is set the grab raises (a camera
    unplugged); a ``mute`` camera takes triggers and never answers them."""

    def __init__(
        self, trigger: str = "free", fail_after: int | None = None, mute: bool = False
    ) -> None:
        super().__init__("fake://camera", trigger)
        self.fail_after = fail_after
        self.mute = mute
        self.unplugged = threading.Event()
        self.grabbed = 0
        self.fired = 0

    def _connect(self) -> None:
        self.hub.camera_triggered = self.trigger_mode == "software"

    def _fire(self) -> None:
        self.fired += 0 if self.mute else 1

    def _grab(self, timeout_s: float) -> None:
        gone = self.fail_after is not None and self.grabbed >= self.fail_after
        if gone or self.unplugged.is_set():
            raise OSError("device removed")
        if self.hub.camera_triggered and self.fired <= self.grabbed:
            time.sleep(0.01)
            return
        self.grabbed += 1
        value = self.grabbed % 256
        self.hub.put(lambda: np.full((8, 8, 3), value, np.uint8), time.monotonic())

    def _disconnect(self) -> None:
        pass


def _feed(
    out: Path, opener, trigger: str = "free", keep: str = "ng", trigger_timeout_s: float = 5.0
) -> CameraFeed:
    config = CameraConfig(
        "rtsp://127.0.0.1/stand-in", trigger=trigger, keep=keep, trigger_timeout_s=trigger_timeout_s
    )
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
        _until_back(feed, 200)  # reopened after 0.5 s, 1 s: two failures, then back
        assert not cameras
    finally:
        feed.close()


def _until_back(feed: CameraFeed, polls: int) -> None:
    """Poll ``feed`` until its camera is back after one outage: said once, and triggers work."""
    for _ in range(polls):
        feed.next()
        if feed.down_since is None:
            break
    assert feed.describe()["camera"] == "ok" and feed.outages == 1
    back = feed.notices()
    assert len(back) == 1 and "is back" in back[0]
    feed.trigger("after")
    assert _next_frame(feed).part_id == "after"


def _next_unanswered(feed: CameraFeed) -> Unanswered:
    for _ in range(100):
        item = feed.next()
        if isinstance(item, Unanswered):
            return item
        assert item is None, item
    raise AssertionError("no trigger was given up")


def test_a_trigger_no_frame_answers_is_given_up_with_its_part_id(tmp_path: Path) -> None:
    camera = FakeCamera("software", mute=True)
    feed = _feed(tmp_path, lambda: camera, trigger="software", trigger_timeout_s=0.2).start(set())
    try:
        started = time.monotonic()
        feed.trigger("P-late")
        late = _next_unanswered(feed)
        assert time.monotonic() - started >= 0.2
        assert late.part_id == "P-late" and "within 0.2 s" in late.reason
        feed.trigger("P-gone")
        camera.unplugged.set()
        gone = _next_unanswered(feed)
        assert gone.part_id == "P-gone" and "went away" in gone.reason
        assert "device removed" in gone.reason and feed.down_since is not None
    finally:
        feed.close()


class AbsentCamera(FakeCamera):
    """A camera the producer does not find (off, or not on the network yet)."""

    def _connect(self) -> None:
        raise ZsadError("fake://camera: no device at that index (0 found)")


def test_a_camera_missing_at_start_is_waited_for_and_said_back(tmp_path: Path) -> None:
    cameras = [AbsentCamera("software"), AbsentCamera("software"), FakeCamera("software")]
    feed = _feed(tmp_path, lambda: cameras.pop(0), trigger="software").start(set())
    try:
        assert feed.describe()["camera"] == "unreachable" and feed.outages == 1
        assert "0 found" in feed.describe()["camera_error"]
        with pytest.raises(TriggerRefused, match="unreachable"):
            feed.trigger("too-early")
        lost = feed.notices()
        assert len(lost) == 1 and lost[0].startswith("camera unreachable, reopening it")
        _until_back(feed, 100)  # reopened after 0.5 s (absent again), then 1 s: back
        assert not cameras
    finally:
        feed.close()


def test_a_setting_the_camera_refuses_stops_the_station_at_start(tmp_path: Path) -> None:
    class Refusing(FakeCamera):
        def _connect(self) -> None:
            raise CameraSettingError("fake://camera: camera setting Width=17: refused")

    with pytest.raises(CameraSettingError, match="Width=17"):
        _feed(tmp_path, lambda: Refusing()).start(set())


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


def _run_station(
    out: Path,
    detector: Detector,
    camera: FakeCamera,
    lines: list[str],
    triggers: tuple[str, ...] = (),
    trigger_timeout_s: float = 0.2,
) -> tuple[dict, CameraFeed]:
    """A station on ``camera`` until idle for 1 s, ``triggers`` fired once it is open: its
    summary and its feed (closed)."""
    feed = _feed(out, lambda: camera, trigger="software", trigger_timeout_s=trigger_timeout_s)
    options = StationOptions(out=out, poll_s=0.05, idle_exit_s=1.0, echo=lines.append)
    station = Station(detector.stream(3), feed.start, options)
    summary: dict = {}
    worker = threading.Thread(target=lambda: summary.update(station.run()))
    worker.start()
    try:
        if triggers:
            wait_until(lambda: feed.camera is not None, "the camera to open", timeout=30)
        for part_id in triggers:
            feed.trigger(part_id)
        worker.join(60)
    finally:
        feed.close()
    assert not worker.is_alive()
    return summary, feed


def _cpu_detector(bundle: Path) -> Detector:
    """The bundle's detector with encoding and scoring on the CPU."""
    return Detector.from_bundle(bundle, device="cpu", scoring=SetScoringConfig(device="cpu"))


def test_a_station_journals_a_trigger_given_up_and_resumes_past_it(
    bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    detector = _cpu_detector(bundle)
    lines: list[str] = []
    first, _ = _run_station(out, detector, FakeCamera("software", mute=True), lines, ("P-9",))
    (record,) = station_records(out)
    assert (record["decision"], record["part_id"], record["index"]) == ("rejected", "P-9", None)
    assert "no frame came within 0.2 s" in record["error"]
    assert record["path"] is None and record["rejected_to"] is None and record["frame"] is None
    assert first["this_run"]["rejected"] == 1
    assert any("trigger for part P-9 not answered" in line for line in lines)
    again, _ = _run_station(out, detector, FakeCamera("software"), [])
    assert again["journal"]["rejected"] == 1 and again["this_run"]["rejected"] == 0
    assert not (out / "rejected").exists()  # no file was rejected: nothing to move


def test_a_trigger_still_waiting_when_the_station_stops_gets_a_record(
    bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    detector = _cpu_detector(bundle)
    lines: list[str] = []
    camera = FakeCamera("software", mute=True)
    # The timeout is far off: the station stops (idle) while both triggers still wait.
    summary, feed = _run_station(out, detector, camera, lines, ("P-1", "P-2"), 60.0)
    records = station_records(out)
    assert [(r["decision"], r["part_id"]) for r in records] == [
        ("rejected", "P-1"),
        ("rejected", "P-2"),
    ]
    assert all(r["error"] == "station stopped before a frame" for r in records)
    assert summary["this_run"]["rejected"] == 2 and summary["stopped_by"].startswith("idle")
    assert any("trigger for part P-2 not answered" in line for line in lines)
    with pytest.raises(TriggerRefused, match="stopping") as refused:
        feed.trigger("P-3")  # taken now, it would get no record
    assert refused.value.busy


def test_a_restart_refills_the_bank_from_the_frames_kept_in_one_line(
    bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    detector = _cpu_detector(bundle)

    def run(frames: int, keep: str) -> list[str]:
        """Score ``frames`` frames (every one: hardware-triggered) from a camera that then goes
        away for good."""
        cameras = [FakeCamera("hardware", fail_after=frames)]

        def opener() -> GrabbingSource:
            if not cameras:
                raise OSError("no device")
            return cameras.pop()

        lines: list[str] = []
        feed = CameraFeed(
            CameraConfig("rtsp://127.0.0.1/stand-in", trigger="hardware", keep=keep),
            out,
            poll_s=0.05,
            echo=lines.append,
            open_camera=opener,
        )
        options = StationOptions(out=out, poll_s=0.05, idle_exit_s=1.0, echo=lines.append)
        try:
            Station(detector.stream(3), feed.start, options).run()
        finally:
            feed.close()
        return lines

    run(6, keep="ng")  # no threshold, so no frame is NG: none is kept
    lines = run(2, keep="all")
    refill = [line for line in lines if "bank refilled" in line]
    assert refill == [
        "zsad: resumed at image 6; bank refilled with 0 of the last 3 scored images (3 no longer "
        "on disk: frames not kept, or files moved away)"
    ]
    assert not any("skipped" in line for line in lines), lines
    # Nothing to refill from: the two new frames make a new warm-up set, scored at the stop.
    records = station_records(out)
    assert [r["phase"] for r in records[6:]] == ["warm-up", "warm-up"]
    lines = run(0, keep="all")
    assert any("bank refilled with 2 of the last 3 scored images (1 no longer" in x for x in lines)
    assert not any("skipped" in line for line in lines), lines
