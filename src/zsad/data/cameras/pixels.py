"""Camera buffers to RGB uint8 (H, W, 3), by GenICam pixel format name (PFNC).

Monochrome and Bayer formats of more than 8 bits arrive unpacked, one little-endian 16-bit word
per pixel, and are scaled to 8 bit (full scale to 255), not clipped. Bayer mosaics are
demosaiced bilinearly: every missing colour is the mean of its nearest samples of that colour,
with the border mirrored so edge pixels keep the mosaic's parity."""

from __future__ import annotations

import re

import numpy as np

from zsad.errors import ZsadError

MONO_BITS = {"Mono8": 8, "Mono10": 10, "Mono12": 12, "Mono14": 14, "Mono16": 16}
# name -> (values per pixel, the order of R, G, B among them)
COLOUR_ORDER = {
    "RGB8": (3, (0, 1, 2)),
    "RGB8Packed": (3, (0, 1, 2)),  # the GigE Vision 1.x name of RGB8
    "BGR8": (3, (2, 1, 0)),
    "BGR8Packed": (3, (2, 1, 0)),
    "RGBa8": (4, (0, 1, 2)),
    "BGRa8": (4, (2, 1, 0)),
}
_BAYER = re.compile(r"Bayer(RG|GR|GB|BG)(8|10|12|14|16)$")
# Where red sits in the mosaic's top-left 2x2 cell; blue is diagonally opposite.
_RED_AT = {"RG": (0, 0), "GR": (0, 1), "GB": (1, 0), "BG": (1, 1)}
_GREEN_KERNEL = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32) / 4
_RED_BLUE_KERNEL = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 4


def supported_formats() -> list[str]:
    """The pixel format names ``to_rgb`` converts."""
    bayer = [f"Bayer{p}{b}" for p in _RED_AT for b in (8, 10, 12, 14, 16)]
    return [*MONO_BITS, *COLOUR_ORDER, *bayer]


def to_rgb(data: np.ndarray, width: int, height: int, pixel_format: str) -> np.ndarray:
    """Convert one camera buffer (flat or shaped) in ``pixel_format`` to RGB uint8 (H, W, 3)."""
    if pixel_format in COLOUR_ORDER:
        channels, order = COLOUR_ORDER[pixel_format]
        pixels = _samples(data, width * height * channels, 8, pixel_format)
        return np.ascontiguousarray(pixels.reshape(height, width, channels)[..., list(order)])
    if pixel_format in MONO_BITS:
        bits = MONO_BITS[pixel_format]
        grey = _to_8bit(_samples(data, width * height, bits, pixel_format), bits)
        return np.repeat(grey.reshape(height, width, 1), 3, axis=2)
    bayer = _BAYER.match(pixel_format)
    if bayer:
        bits = int(bayer.group(2))
        raw = _to_8bit(_samples(data, width * height, bits, pixel_format), bits)
        return demosaic(raw.reshape(height, width), bayer.group(1))
    packed = pixel_format.endswith(("p", "Packed"))
    hint = " (packed: set the camera's PixelFormat to an unpacked one)" if packed else ""
    raise ZsadError(
        f"pixel format {pixel_format} is not supported{hint}; zsad reads "
        + ", ".join(supported_formats())
    )


def demosaic(raw: np.ndarray, pattern: str) -> np.ndarray:
    """Bilinear demosaic of an 8-bit Bayer mosaic whose top-left cell starts ``pattern``."""
    height, width = raw.shape
    if height < 2 or width < 2:
        raise ZsadError(f"a Bayer image needs at least 2x2 pixels, got {width}x{height}")
    red_y, red_x = _RED_AT[pattern]
    rows = (np.arange(height) % 2)[:, None]
    cols = (np.arange(width) % 2)[None, :]
    red = (rows == red_y) & (cols == red_x)
    blue = (rows != red_y) & (cols != red_x)
    plane = raw.astype(np.float32)
    rgb = np.empty((height, width, 3), np.uint8)
    for channel, mask, kernel in (
        (0, red, _RED_BLUE_KERNEL),
        (1, ~(red | blue), _GREEN_KERNEL),
        (2, blue, _RED_BLUE_KERNEL),
    ):
        rgb[..., channel] = np.clip(np.rint(_filter3(plane * mask, kernel)), 0, 255)
    return rgb


def _filter3(plane: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    # "reflect" mirrors without repeating the edge, so a mirrored sample keeps its Bayer colour.
    padded = np.pad(plane, 1, mode="reflect")
    height, width = plane.shape
    out = np.zeros_like(plane)
    for dy in range(3):
        for dx in range(3):
            if kernel[dy, dx]:
                out += kernel[dy, dx] * padded[dy : dy + height, dx : dx + width]
    return out


def _samples(data: np.ndarray, count: int, bits: int, pixel_format: str) -> np.ndarray:
    flat = np.ascontiguousarray(data).reshape(-1)
    if bits > 8 and flat.dtype == np.uint8:
        if flat.size % 2:
            raise ZsadError(f"{pixel_format}: an odd byte count ({flat.size}) for 16-bit pixels")
        flat = flat.view("<u2")
    expected = np.uint8 if bits == 8 else np.uint16
    if flat.dtype != expected:
        raise ZsadError(f"{pixel_format}: buffer of {flat.dtype}, expected {np.dtype(expected)}")
    if flat.size != count:
        raise ZsadError(f"{pixel_format}: buffer holds {flat.size} values, the image needs {count}")
    return flat


def _to_8bit(values: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return values
    full = (1 << bits) - 1
    wide = np.minimum(values, full).astype(np.uint32)
    return ((wide * 255 + full // 2) // full).astype(np.uint8)
