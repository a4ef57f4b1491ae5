"""GenICam acquisition from a real GenTL producer: the simulator the genicam wheel ships
(viky.cti, three virtual devices streaming RGBa8 or Mono8), read through harvesters."""

from __future__ import annotations

import time

import numpy as np
import pytest

from camera_sim import GENTL_MISSING, GENTL_SIMULATOR, GENTL_URI
from helpers import require_service
from zsad.data.cameras.uri import open_source
from zsad.errors import ZsadError

require_service(GENTL_SIMULATOR is not None, GENTL_MISSING)
URI = GENTL_URI


def test_free_run_acquires_numbered_rgb_frames_at_the_set_rate() -> None:
    with open_source(URI, {"AcquisitionFrameRate": "50"}) as source:
        first = source.read(5)
        assert first is not None
        started = time.monotonic()
        frames = [source.read(5) for _ in range(10)]
        elapsed = time.monotonic() - started
    assert first.image.shape == (400, 400, 3) and first.image.dtype == np.uint8
    numbers = [f and f.number for f in frames]
    assert numbers == list(range(1, 11))
    assert first.part_id is None and first.source == f"{URI}?index=0"
    assert 0.1 < elapsed < 1.0  # ten frames at 50/s, not as fast as the reader asks


def test_settings_reach_the_device_chosen_by_serial() -> None:
    settings = {"PixelFormat": "Mono8", "Width": "128", "Height": 100}
    with open_source(f"{URI}?serial=2", settings) as source:
        frame = source.read(5)
    assert frame is not None and frame.image.shape == (100, 128, 3)
    assert (frame.image == frame.image[..., :1]).all()  # Mono8 comes back grey
    assert frame.source.endswith("?serial=2")


def test_a_software_trigger_gives_one_frame_per_trigger_with_its_part_id() -> None:
    with open_source(URI, {"AcquisitionFrameRate": "100"}, trigger="software") as source:
        assert source.read(0.3) is None  # streaming, but nothing asked for
        latencies, frames = [], []
        for part in ("A-1", "A-2", "A-3", "A-4", "A-5"):
            asked = time.monotonic()
            source.trigger(part)
            frames.append(source.read(5))
            latencies.append(time.monotonic() - asked)
        assert source.read(0.3) is None  # one frame per trigger, no more
    assert [f and f.part_id for f in frames] == ["A-1", "A-2", "A-3", "A-4", "A-5"]
    assert max(latencies) < 0.5
    assert source.dropped > 0  # the frames streamed between triggers


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"ExposureTime": "5000"}, "camera setting ExposureTime: the camera has no such feature"),
        ({"Width": "17"}, "camera setting Width=17: refused (Value = 17 must be equal or greater"),
        ({"PixelFormat": "YUV"}, "camera setting PixelFormat=YUV: refused (Feature 'PixelFormat'"),
    ],
)
def test_a_bad_setting_is_refused_in_one_line_and_the_device_is_released(
    settings: dict, needle: str
) -> None:
    with pytest.raises(ZsadError) as caught:
        open_source(URI, settings).open()
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    with open_source(URI) as source:  # the refused open left the device free
        assert source.read(5) is not None


def test_a_device_that_is_not_there_is_named() -> None:
    with pytest.raises(ZsadError, match=r"no device with that serial \(found \['0', '1', '2'\]\)"):
        open_source(f"{URI}?serial=77").open()
    with pytest.raises(ZsadError, match=r"no device at that index \(3 found\)"):
        open_source(f"{URI}?index=3").open()
