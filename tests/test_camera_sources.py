"""Camera sources without a camera: URI parsing, trigger modes, the hand-over rules between the
grabbing thread and the reader, and the GenICam trigger features on a stand-in node map."""

from __future__ import annotations

import threading
import time
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from helpers import require_service
from zsad.data.cameras import genicam
from zsad.data.cameras.rtsp import redacted
from zsad.data.cameras.source import FrameHub, GrabbingSource, parse_trigger
from zsad.data.cameras.uri import open_source, parse_settings
from zsad.errors import ZsadError


def image(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, np.uint8)


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("usb://cam0", "unknown scheme 'usb'"),
        ("aravis://Basler-1234/stream?x=1", "expected aravis://DEVICE-ID, with no path or query"),
        ("/data/frames", "unknown scheme '(none)'"),
        (
            "genicam:///nowhere/producer.cti",
            "no GenTL producer (.cti file) at /nowhere/producer.cti",
        ),
    ],
)
def test_a_uri_that_names_no_source_is_refused_in_one_line(uri: str, needle: str) -> None:
    with pytest.raises(ZsadError) as caught:
        open_source(uri)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("query", "needle"),
    [("?index=x", "index=x is not a device number"), ("?colour=red", "one of serial=SERIAL")],
)
def test_a_genicam_query_takes_serial_or_index(tmp_path: Path, query: str, needle: str) -> None:
    (tmp_path / "p.cti").write_bytes(b"")
    with pytest.raises(ZsadError, match=needle):
        open_source(f"genicam://{tmp_path}/p.cti{query}")


def test_a_missing_optional_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def blocked(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] in ("av", "harvesters", "gi"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)
    with pytest.raises(ZsadError, match=r"PyAV \(pip install 'zsad\[camera\]'\)"):
        open_source("rtsp://127.0.0.1:1/x")
    with pytest.raises(ZsadError, match=r"harvesters and genicam \(pip install 'zsad\[camera\]'\)"):
        genicam.GenicamSource(Path("p.cti"))
    with pytest.raises(
        ZsadError, match=r"PyGObject and Aravis 0\.8 \(apt-get install gir1\.2-aravis"
    ):
        open_source("aravis://any")


def test_trigger_modes_and_settings_parse_or_fail_in_one_line() -> None:
    assert parse_trigger("hardware") == ("hardware", "Line0")
    assert parse_trigger("hardware:Line2") == ("hardware", "Line2")
    assert parse_trigger("software") == ("software", None)
    for bad in ("soft", "software:Line0"):
        with pytest.raises(ZsadError, match="expected free, software, hardware"):
            parse_trigger(bad)
    assert parse_settings(["ExposureTime=5000", " Gain = 2.5 "]) == {
        "ExposureTime": "5000",
        "Gain": "2.5",
    }
    with pytest.raises(ZsadError, match="'ExposureTime': expected NAME=VALUE"):
        parse_settings(["ExposureTime"])
    with pytest.raises(ZsadError, match="takes no camera settings"):
        open_source("rtsp://127.0.0.1:1/x", settings={"Gain": "1"})
    with pytest.raises(ZsadError, match="no hardware trigger"):
        open_source("rtsp://127.0.0.1:1/x", trigger="hardware")


def test_an_rtsp_password_never_reaches_a_name() -> None:
    assert redacted("rtsp://op:s3cret@10.0.0.5:554/stream1") == "rtsp://op:***@10.0.0.5:554/stream1"
    assert redacted("rtsp://10.0.0.5/s") == "rtsp://10.0.0.5/s"
    require_service(find_spec("av") is not None, "PyAV is not installed (the camera extra)")
    with pytest.raises(ZsadError) as caught:
        source = open_source("rtsp://op:s3cret@127.0.0.1:1/x", timeout_s=1)
        source.open()
    assert "s3cret" not in str(caught.value) and "op:***@" in str(caught.value)


def test_free_run_hands_over_only_the_newest_frame() -> None:
    hub = FrameHub("free")
    for value in range(3):
        hub.put(lambda value=value: image(value), time.monotonic())
    got = hub.get(0)
    assert got is not None and got[0][0, 0, 0] == 2 and got[2] is None
    assert hub.dropped == 2 and hub.get(0) is None


def test_a_host_side_trigger_takes_the_first_frame_after_it_one_frame_each() -> None:
    hub = FrameHub("software")
    hub.put(lambda: image(1), time.monotonic())  # nobody asked: dropped
    hub.want("A")
    hub.want("B")
    before = time.monotonic() - 1
    hub.put(lambda: image(2), before)  # reached the host before the triggers: not an answer
    hub.put(lambda: image(3), time.monotonic())
    hub.put(lambda: image(4), time.monotonic())
    hub.put(lambda: image(5), time.monotonic())  # both triggers answered: dropped
    answers = [hub.get(0), hub.get(0), hub.get(0)]
    assert [(a[0][0, 0, 0], a[2]) for a in answers[:2]] == [(3, "A"), (4, "B")]
    assert answers[2] is None and hub.dropped == 3


def test_camera_and_hardware_triggered_frames_are_all_kept_in_order() -> None:
    hub = FrameHub("software", camera_triggered=True)
    hub.want("P1")
    hub.want("P2")
    hub.put(lambda: image(1), 0.0)
    hub.put(lambda: image(2), 0.0)
    assert [hub.get(0)[2], hub.get(0)[2]] == ["P1", "P2"]  # type: ignore[index]
    wired = FrameHub("hardware")
    for value in range(3):
        wired.put(lambda value=value: image(value), 0.0)
    assert [wired.get(0)[0][0, 0, 0] for _ in range(3)] == [0, 1, 2]  # type: ignore[index]


def test_triggers_given_up_are_answered_by_no_later_frame() -> None:
    hub = FrameHub("software", camera_triggered=True)
    hub.want("P1")
    time.sleep(0.1)
    hub.want("P2")
    assert hub.overdue(0.05) == ["P1"]  # P2 is younger than the timeout
    assert hub.abandon() == ["P2"] and hub.overdue(0.0) == []
    hub.put(lambda: image(1), 0.0)  # the late answer to P1 or P2: given to no one
    assert hub.get(0) is None and hub.dropped == 1
    hub.want("P3")
    hub.put(lambda: image(3), 0.0)
    assert hub.get(0)[2] == "P3"  # type: ignore[index]


def test_stopping_gives_up_triggers_waiting_and_answers_not_read() -> None:
    hub = FrameHub("software", camera_triggered=True)
    for part in ("P1", "P2", "P3"):
        hub.want(part)
    hub.put(lambda: image(1), 0.0)  # answers P1, never read
    assert hub.stop() == (["P2", "P3"], ["P1"])
    assert hub.get(0) is None and hub.stop() == ([], [])
    free = FrameHub("free")
    free.put(lambda: image(1), 0.0)
    assert free.stop() == ([], []) and free.get(0) is not None  # no trigger: nothing given up


def test_only_frames_kept_are_copied_and_only_frames_read_are_converted() -> None:
    class Streaming(GrabbingSource):
        """Streams numbered raw frames; counts the copies and conversions it makes."""

        def __init__(self) -> None:
            super().__init__("cam", "software")
            self.grabbed = self.copied = self.converted = 0

        def _connect(self) -> None:
            pass

        def _grab(self, timeout_s: float) -> None:
            time.sleep(0.002)
            self.grabbed += 1
            self.hub.put(self._copy, time.monotonic())

        def _copy(self) -> int:
            self.copied += 1
            return self.grabbed

        def _convert(self, raw: int) -> np.ndarray:
            self.converted += 1
            return image(raw % 256)

        def _disconnect(self) -> None:
            pass

    with Streaming() as source:
        time.sleep(0.2)
        for part in ("A", "B", "C"):
            source.trigger(part)
            frame = source.read(5)
            assert frame is not None and frame.part_id == part
        time.sleep(0.2)
    # The camera streamed all along, but only the three answers left its buffers or were
    # converted: the rest were dropped untouched.
    assert source.grabbed > 20 and source.dropped == source.grabbed - 3
    assert (source.copied, source.converted) == (3, 3)


def test_a_camera_that_can_rest_is_not_read_between_triggers_and_drained_after() -> None:
    class Resting(GrabbingSource):
        """Streams when read; logs each drain and each frame grabbed; ``gone`` once unplugged."""

        rests_between_triggers = True

        def __init__(self) -> None:
            super().__init__("cam", "software")
            self.calls: list[str] = []
            self.gone = False

        def _check_alive(self) -> None:
            if self.gone:
                raise ZsadError("cam: control lost")

        def _connect(self) -> None:
            pass

        def _drain(self) -> None:
            self.calls.append("drain")

        def _grab(self, timeout_s: float) -> None:
            time.sleep(0.002)
            self.calls.append("grab")
            self.hub.put(lambda: image(len(self.calls) % 256), time.monotonic())

        def _disconnect(self) -> None:
            pass

    with Resting() as source:
        time.sleep(0.3)
        assert source.calls == []  # no trigger waits: the camera is not read at all
        answers = []
        for part in ("A", "B"):
            source.trigger(part)
            answers.append(source.read(5))
            time.sleep(0.3)
            assert source.calls[-1] == "grab" and source.read(0) is None
        resting = len(source.calls)
        time.sleep(0.3)
        assert len(source.calls) == resting
        source.gone = True  # unplugged while resting: said without waiting for a trigger
        with pytest.raises(ZsadError, match="control lost"):
            source.read(1)
    assert [a and a.part_id for a in answers] == ["A", "B"]
    # What the camera held when a trigger came is older than it: drained before each answer.
    assert source.calls == ["drain", "grab", "drain", "grab"]


def test_a_grabbing_error_reaches_the_reader_and_a_wait_times_out() -> None:
    class Broken(GrabbingSource):
        def _connect(self) -> None:
            pass

        def _grab(self, timeout_s: float) -> None:
            raise ZsadError("cam: unplugged")

        def _disconnect(self) -> None:
            pass

    with Broken("cam") as source, pytest.raises(ZsadError, match="unplugged"):
        source.read(5)
    idle = FrameHub("free")
    started = time.monotonic()
    assert idle.get(0.2) is None and time.monotonic() - started >= 0.2
    with pytest.raises(ZsadError, match="trigger\\(\\) needs trigger='software'"):
        Broken("cam").trigger("x")


class StandInNode:
    """A GenApi feature: ``from_string`` checks the value against ``allowed``."""

    def __init__(self, name: str, log: list, allowed: tuple = ()) -> None:
        self.name, self.log, self.allowed = name, log, allowed

    def from_string(self, value: str) -> None:
        if self.allowed and value not in self.allowed:
            raise RuntimeError(f"Feature '{self.name}' : cannot convert value : Invalid thrown")
        self.log.append((self.name, value))

    def execute(self) -> None:
        self.log.append((self.name, "execute"))


class StandInDevice:
    """A harvesters ImageAcquirer with trigger features, sending one Mono8 frame per trigger."""

    def __init__(self, log: list) -> None:
        self.log = log
        self.frames: list[int] = []
        self.fired = threading.Semaphore(0)
        nodes = {
            "TriggerSelector": ("FrameStart",),
            "TriggerMode": ("On", "Off"),
            "TriggerSource": ("Software", "Line0", "Line1"),
            "TriggerSoftware": (),
            "ExposureTime": (),
        }
        self.nodes = {n: StandInNode(n, log, allowed) for n, allowed in nodes.items()}
        self.nodes["TriggerSoftware"].execute = self.fire  # type: ignore[method-assign]
        self.remote_device = SimpleNamespace(node_map=SimpleNamespace(get_node=self.get_node))

    def get_node(self, name: str) -> StandInNode:
        if name not in self.nodes:
            raise LookupError("Node not existing")
        return self.nodes[name]

    def fire(self) -> None:
        self.log.append(("TriggerSoftware", "execute"))
        self.fired.release()

    def try_fetch(self, timeout: float) -> Any:
        if not self.fired.acquire(timeout=timeout):
            return None
        component = SimpleNamespace(data=np.full(4, 7, np.uint8), width=2, height=2)
        component.data_format = "Mono8"
        return _Buffer(SimpleNamespace(components=[component]))

    def start(self) -> None:
        self.log.append(("start", ""))

    def stop(self) -> None:
        pass

    def destroy(self) -> None:
        pass


class _Buffer:
    """A harvesters buffer: a context manager that hands it back to the producer."""

    def __init__(self, payload: Any) -> None:
        self.payload = payload

    def __enter__(self) -> _Buffer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    log: list = []
    device = StandInDevice(log)

    class Harvester:
        device_info_list = [SimpleNamespace(serial_number="S1")]

        def add_file(self, path: str, check_validity: bool) -> None:
            pass

        def update(self) -> None:
            pass

        def create(self, which: Any) -> StandInDevice:
            return device

        def reset(self) -> None:
            pass

    monkeypatch.setattr(genicam, "_harvester_class", lambda: Harvester)
    (tmp_path / "p.cti").write_bytes(b"")
    return SimpleNamespace(log=log, uri=f"genicam://{tmp_path}/p.cti")


def test_a_software_trigger_sets_the_features_and_fires_once_per_part(stand_in) -> None:
    with open_source(stand_in.uri, {"ExposureTime": "800"}, trigger="software") as source:
        assert stand_in.log[:5] == [
            ("TriggerSelector", "FrameStart"),
            ("TriggerMode", "On"),
            ("TriggerSource", "Software"),
            ("ExposureTime", "800"),  # after the trigger features, so it can refine them
            ("start", ""),
        ]
        frames = []
        for part in ("P1", "P2", "P3"):
            source.trigger(part)
            frames.append(source.read(5))
    assert [f.part_id for f in frames] == ["P1", "P2", "P3"]
    assert [f.number for f in frames] == [0, 1, 2]
    assert frames[0].image.shape == (2, 2, 3) and frames[0].source.endswith("p.cti?index=0")
    assert stand_in.log.count(("TriggerSoftware", "execute")) == 3


def test_a_hardware_trigger_names_the_line_and_free_run_turns_triggering_off(stand_in) -> None:
    with open_source(stand_in.uri + "?serial=S1", trigger="hardware:Line1") as source:
        assert ("TriggerSource", "Line1") in stand_in.log
        with pytest.raises(ZsadError, match="needs trigger='software'"):
            source.trigger("P1")
    stand_in.log.clear()
    with open_source(stand_in.uri):
        assert stand_in.log == [("TriggerMode", "Off"), ("start", "")]


def test_settings_name_an_unknown_feature_or_a_refused_value(stand_in) -> None:
    with pytest.raises(ZsadError, match="camera setting Exposure: the camera has no such feature"):
        open_source(stand_in.uri, {"Exposure": "5"}).open()
    with pytest.raises(
        ZsadError, match=r"TriggerSource=Line7: refused \(Feature 'TriggerSource'\)"
    ):
        open_source(stand_in.uri, {"TriggerSource": "Line7"}).open()
    with pytest.raises(ZsadError, match="no device with that serial"):
        open_source(stand_in.uri + "?serial=S9").open()
