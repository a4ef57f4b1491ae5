"""Camera buffers to RGB: monochrome depths, colour orders and Bayer demosaicing, on synthetic
buffers built from a known RGB picture."""

from __future__ import annotations

import numpy as np
import pytest

from zsad.data.cameras.pixels import demosaic, supported_formats, to_rgb
from zsad.errors import ZsadError

# Which colour each position of the 2x2 cell samples, per pattern (0 R, 1 G, 2 B).
CELLS = {
    "RG": [[0, 1], [1, 2]],
    "GR": [[1, 0], [2, 1]],
    "GB": [[1, 2], [0, 1]],
    "BG": [[2, 1], [1, 0]],
}


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """What a Bayer sensor with ``pattern`` records of the picture ``rgb``."""
    height, width, _ = rgb.shape
    cell = np.array(CELLS[pattern])
    channel = cell[np.arange(height)[:, None] % 2, np.arange(width)[None, :] % 2]
    return np.take_along_axis(rgb, channel[..., None], axis=2)[..., 0]


def ramp(height: int = 12, width: int = 16) -> np.ndarray:
    """A picture whose channels are planes in (y, x): bilinear interpolation is exact inside."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([10 + 8 * x, 20 + 9 * y, 200 - 5 * x - 4 * y], axis=2).astype(np.uint8)


@pytest.mark.parametrize("pattern", list(CELLS))
def test_a_flat_colour_comes_back_exactly_everywhere_edges_included(pattern: str) -> None:
    rgb = np.empty((6, 8, 3), np.uint8)
    rgb[:] = (200, 90, 15)
    np.testing.assert_array_equal(to_rgb(mosaic(rgb, pattern), 8, 6, f"Bayer{pattern}8"), rgb)


@pytest.mark.parametrize("pattern", list(CELLS))
def test_demosaic_reconstructs_a_linear_picture_inside_the_border(pattern: str) -> None:
    rgb = ramp()
    got = demosaic(mosaic(rgb, pattern), pattern).astype(int)
    assert np.abs(got[1:-1, 1:-1] - rgb[1:-1, 1:-1]).max() <= 1


def test_the_wrong_pattern_swaps_the_colours() -> None:
    rgb = np.empty((4, 4, 3), np.uint8)
    rgb[:] = (220, 120, 20)
    assert tuple(demosaic(mosaic(rgb, "RG"), "BG")[2, 2]) == (20, 120, 220)


def test_bayer_of_more_than_8_bits_is_scaled_before_demosaicing() -> None:
    rgb = np.empty((4, 4, 3), np.uint16)
    rgb[:] = (4095, 2048, 0)
    raw = mosaic(rgb, "GR")
    assert tuple(to_rgb(raw, 4, 4, "BayerGR12")[1, 1]) == (255, 128, 0)


@pytest.mark.parametrize(("name", "full"), [("Mono10", 1023), ("Mono12", 4095), ("Mono16", 65535)])
def test_deep_mono_is_scaled_full_scale_to_255_and_replicated(name: str, full: int) -> None:
    values = np.array([[0, full, full // 2, full + 1 if full < 65535 else full]], np.uint16)
    got = to_rgb(values, 4, 1, name)
    assert got.shape == (1, 4, 3) and got.dtype == np.uint8
    assert got[0, :, 0].tolist() == [0, 255, 127, 255]  # a value over full scale is clipped
    assert (got == got[..., :1]).all()


def test_mono_words_as_raw_little_endian_bytes() -> None:
    words = np.array([1023, 0, 512], "<u2")
    got = to_rgb(words.view(np.uint8), 3, 1, "Mono10")
    assert got[0, :, 1].tolist() == [255, 0, 128]


def test_mono8_is_grey() -> None:
    got = to_rgb(np.arange(6, dtype=np.uint8), 3, 2, "Mono8")
    np.testing.assert_array_equal(got[..., 2], [[0, 1, 2], [3, 4, 5]])


@pytest.mark.parametrize(
    ("name", "channels", "order"),
    [
        ("RGB8", 3, [0, 1, 2]),
        ("BGR8", 3, [2, 1, 0]),
        ("RGBa8", 4, [0, 1, 2]),
        ("BGRa8", 4, [2, 1, 0]),
    ],
)
def test_colour_formats_come_back_in_rgb_order(name: str, channels: int, order: list[int]) -> None:
    rgb = ramp(3, 5)
    stored = np.zeros((3, 5, channels), np.uint8)
    stored[..., order] = rgb
    np.testing.assert_array_equal(to_rgb(stored.reshape(-1), 5, 3, name), rgb)


def test_unknown_and_packed_formats_are_refused_in_one_line() -> None:
    with pytest.raises(ZsadError, match=r"YUV422_8 is not supported; zsad reads Mono8, "):
        to_rgb(np.zeros(8, np.uint8), 2, 2, "YUV422_8")
    with pytest.raises(ZsadError, match=r"Mono12p is not supported \(packed"):
        to_rgb(np.zeros(8, np.uint8), 2, 2, "Mono12p")
    assert "BayerBG16" in supported_formats()


def test_a_buffer_of_the_wrong_size_names_both_counts() -> None:
    with pytest.raises(ZsadError, match="Mono8: buffer holds 5 values, the image needs 6"):
        to_rgb(np.zeros(5, np.uint8), 3, 2, "Mono8")
    with pytest.raises(ZsadError, match="odd byte count"):
        to_rgb(np.zeros(5, np.uint8), 3, 1, "Mono12")
