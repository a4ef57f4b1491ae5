"""Tests for zsad.data.images: every file mode loads as upright RGB uint8, failures are clear."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import zsad.data.images as images_module
from helpers import ENV
from zsad.data.images import (
    IMAGE_EXTENSIONS,
    ImageLoadError,
    is_image_file,
    load_image,
    load_image_bounded,
    load_mask,
)
from zsad.errors import ZsadError

EXIF_ORIENTATION = 0x0112


def _save(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


def _assert_rgb(array: np.ndarray, shape: tuple[int, int]) -> None:
    assert array.dtype == np.uint8
    assert array.shape == (*shape, 3)


def test_rgb_png_round_trips_exactly(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = _save(Image.fromarray(pixels), tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_image(path), pixels)


def test_grayscale_is_replicated_to_three_channels(tmp_path: Path) -> None:
    gray = np.array([[0, 10], [128, 255]], dtype=np.uint8)
    array = load_image(_save(Image.fromarray(gray), tmp_path / "l.png"))
    _assert_rgb(array, (2, 2))
    for channel in range(3):
        np.testing.assert_array_equal(array[:, :, channel], gray)


def test_one_bit_image_maps_to_black_and_white(tmp_path: Path) -> None:
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)
    array = load_image(_save(image, tmp_path / "bits.png"))
    np.testing.assert_array_equal(array[0, :, 0], [0, 255])


def test_la_drops_alpha_and_keeps_gray(tmp_path: Path) -> None:
    image = Image.new("LA", (3, 2), (90, 0))
    array = load_image(_save(image, tmp_path / "la.png"))
    _assert_rgb(array, (2, 3))
    assert (array == 90).all()


def test_rgba_drops_alpha_and_keeps_stored_colour(tmp_path: Path) -> None:
    pixels = np.zeros((2, 2, 4), dtype=np.uint8)
    pixels[..., :3] = (200, 100, 50)
    pixels[0, 0, 3] = 255
    array = load_image(_save(Image.fromarray(pixels), tmp_path / "rgba.png"))
    _assert_rgb(array, (2, 2))
    assert (array == (200, 100, 50)).all()


def test_palette_image_maps_indices_to_colours(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.putpixel((1, 0), 1)
    array = load_image(_save(image, tmp_path / "p.png"))
    np.testing.assert_array_equal(array[0], [[255, 0, 0], [0, 0, 255]])


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("transparency", [1, b"\x00\x80"])
def test_palette_with_transparency_loads_without_warnings(
    tmp_path: Path, transparency: int | bytes
) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0])
    image.putpixel((1, 0), 1)
    path = _save(image, tmp_path / "pt.png", transparency=transparency)
    with Image.open(path) as written:
        assert "transparency" in written.info
    np.testing.assert_array_equal(load_image(path)[0], [[255, 0, 0], [0, 255, 0]])


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "g16.png")
    array = load_image(path)
    np.testing.assert_array_equal(array[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(array[..., 0], array[..., 2])


def test_32_bit_integer_holding_16_bit_values_is_scaled(tmp_path: Path) -> None:
    values = np.array([[0, 514, 65535]], dtype=np.int32)
    path = _save(Image.fromarray(values), tmp_path / "i32.tif")
    with Image.open(path) as written:
        assert written.mode == "I"
    np.testing.assert_array_equal(load_image(path)[0, :, 1], [0, 2, 255])


def test_float_image_in_unit_range_is_scaled(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    path = _save(Image.fromarray(values), tmp_path / "f.tif")
    np.testing.assert_array_equal(load_image(path)[0, :, 0], [0, 128, 255])


def test_cmyk_is_converted_to_rgb(tmp_path: Path) -> None:
    image = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    image.putpixel((1, 0), (255, 0, 0, 0))
    array = load_image(_save(image, tmp_path / "cmyk.tif"))
    np.testing.assert_array_equal(array[0], [[255, 255, 255], [0, 255, 255]])


def _red_left_blue_right_jpeg(path: Path, orientation: int) -> Path:
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return _save(Image.fromarray(pixels), path, exif=exif, quality=95)


@pytest.mark.parametrize(("orientation", "top_colour"), [(6, 0), (8, 2)])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, top_colour: int) -> None:
    path = _red_left_blue_right_jpeg(tmp_path / f"o{orientation}.jpg", orientation)
    array = load_image(path)
    # Stored 40 wide x 20 high; both tags mean a quarter turn, so it comes back 40 high.
    _assert_rgb(array, (40, 20))
    # Orientation 6 turns clockwise (the left edge goes on top), 8 anticlockwise.
    assert array[5, 10, top_colour] > 200
    assert array[34, 10, 2 - top_colour] > 200


@pytest.mark.parametrize("shape", [(1, 1), (3, 1000)])
def test_extreme_shapes_load(tmp_path: Path, shape: tuple[int, int]) -> None:
    path = _save(Image.new("RGB", shape[::-1], (1, 2, 3)), tmp_path / "odd.bmp")
    _assert_rgb(load_image(path), shape)


def _assert_load_error(path: Path, reason_part: str) -> None:
    with pytest.raises(ImageLoadError) as caught:
        load_image(path)
    error = caught.value
    assert isinstance(error, ZsadError)
    assert error.path == path
    assert reason_part in error.reason
    assert str(path) in str(error)
    assert "cannot read image" in str(error)
    assert "\n" not in str(error)


def test_error_survives_pickling_for_worker_processes(tmp_path: Path) -> None:
    error = ImageLoadError(tmp_path / "x.png", "file is empty")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.reason, str(copy)) == (error.path, error.reason, str(error))


def test_missing_file_raises(tmp_path: Path) -> None:
    _assert_load_error(tmp_path / "absent.png", "no such file")


def test_directory_raises(tmp_path: Path) -> None:
    folder = tmp_path / "folder.png"
    folder.mkdir()
    _assert_load_error(folder, "directory")


def test_zero_byte_file_raises(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.touch()
    _assert_load_error(empty, "empty")


def test_text_named_png_raises(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    _assert_load_error(text, "not a recognised image format")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_raises(tmp_path: Path, suffix: str) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = _save(Image.fromarray(noise), tmp_path / f"cut{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_load_error(path, "corrupt or truncated")


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("RGB", (64, 64)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    _assert_load_error(path, "decompression bomb")


def test_image_over_the_bomb_warning_limit_gets_one_zsad_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _save(Image.new("RGB", (12, 10)), tmp_path / "large.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.setattr(images_module, "_large_noted", False, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_image_bounded(path, 6).shape == (5, 6, 3)
        assert load_image_bounded(path, 6).shape == (5, 6, 3)
    assert [w.category.__name__ for w in caught] == []
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"zsad: warning: {path}: 0 MP image (12x10)")
    assert "shrunk to 6 px on its longest side" in lines[0]


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec.
PEAK_PROBE = textwrap.dedent(
    """
    import re, sys
    from zsad.data.images import load_image, load_image_bounded

    def peak_kib():
        with open("/proc/self/status") as status:
            return int(re.search(r"VmHWM:\\s*(\\d+)", status.read()).group(1))

    before = peak_kib()
    path, side = sys.argv[1], int(sys.argv[2])
    pixels = load_image(path) if side == 0 else load_image_bounded(path, side)
    print((peak_kib() - before) * 1024)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from /proc")
def test_decoding_a_large_png_holds_no_extra_full_size_copies(tmp_path: Path) -> None:
    height, width = 4500, 6000
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[:, :, 0] = np.arange(width, dtype=np.uint8)
    pixels[:, :, 1] = np.arange(height, dtype=np.uint8)[:, None]
    pixels[:, :, 2] = 7
    path = _save(Image.fromarray(pixels), tmp_path / "large.png", compress_level=1)
    decoded = pixels.nbytes
    del pixels

    def peak(side: int) -> float:
        run = subprocess.run(
            [sys.executable, "-c", PEAK_PROBE, str(path), str(side)],
            env=ENV,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return int(run.stdout) / decoded

    # Pillow holds RGB as 4 bytes a pixel (1.33x); the shrunk frame adds little to that.
    assert peak(256) <= 1.6
    # At full size the returned array comes on top of Pillow's decoded image, and nothing else.
    assert peak(0) <= 2.7


def test_mask_is_bool_and_positive_means_anomalous(tmp_path: Path) -> None:
    values = np.array([[0, 1], [255, 0]], dtype=np.uint8)
    mask = load_mask(_save(Image.fromarray(values), tmp_path / "m.png"))
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, [[False, True], [True, False]])


def test_16_bit_mask_storing_ones_is_not_lost(tmp_path: Path) -> None:
    values = np.array([[0, 1]], dtype=np.uint16)
    mask = load_mask(_save(Image.fromarray(values), tmp_path / "m16.png"))
    np.testing.assert_array_equal(mask, [[False, True]])


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_colour_masks_are_converted(tmp_path: Path, mode: str) -> None:
    image = Image.new("RGB", (2, 1))
    image.putpixel((1, 0), (255, 255, 255))
    if mode != "RGB":
        image = image.convert(mode)
    mask = load_mask(_save(image, tmp_path / f"m_{mode}.png"))
    np.testing.assert_array_equal(mask, [[False, True]])


def test_mask_resize_takes_height_width_and_is_nearest(tmp_path: Path) -> None:
    values = np.zeros((2, 4), dtype=np.uint8)
    values[:, 2:] = 255
    path = _save(Image.fromarray(values), tmp_path / "m.png")
    mask = load_mask(path, size=(4, 8))
    assert mask.shape == (4, 8)
    assert not mask[:, :4].any()
    assert mask[:, 4:].all()


def test_mask_errors_are_image_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="no such file"):
        load_mask(tmp_path / "absent_mask.png")


def test_image_extensions_match_any_case() -> None:
    assert set(IMAGE_EXTENSIONS) >= {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
    assert is_image_file("a/B.PNG")
    assert is_image_file("x.Tiff")
    assert not is_image_file("x.txt")
    assert not is_image_file("png")
