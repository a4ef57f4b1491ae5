"""Robust loading of images and ground-truth masks into NumPy arrays.

Every image comes back as RGB uint8 with shape (H, W, 3), whatever its file mode:

- alpha is dropped (the stored colour is kept), which is what ``Image.convert("RGB")``
  does and so what reference CLIP pipelines see;
- 16-bit and 32-bit grayscale is scaled to 8 bit (65535 -> 255), not clipped;
- the EXIF orientation tag is applied, so arrays are upright as a viewer shows them.

``load_image_bounded`` keeps all of that and shrinks the image (aspect ratio kept) so its longest
side is at most a bound; JPEGs are decoded at a reduced scale, so a huge frame never needs its
full-size pixels in memory, and other formats are decoded once and shrunk without a second
full-size copy.

Failures of any kind raise :class:`ImageLoadError`, whose one-line message names the path.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from zsad.errors import ZsadError, echo_stderr

StrPath = str | os.PathLike[str]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_UINT16_MAX = 65535
# Modes whose pixels are read as RGB without a full-size conversion first (L is replicated).
_DIRECT_MODES = frozenset({"RGB", "L"})
_BAND_BYTES = 1 << 20
_large_noted = False
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageLoadError(ZsadError):
    """An image or mask file that cannot be read; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: StrPath, reason: str) -> None:
        self.path = Path(path)
        self.reason = " ".join(reason.split())
        super().__init__(f"{self.path}: cannot read image ({self.reason})")

    def __reduce__(self) -> tuple[type[ImageLoadError], tuple[Path, str]]:
        """Pickle by (path, reason) so the error survives a trip out of a worker process."""
        return (type(self), (self.path, self.reason))


def is_image_file(path: StrPath) -> bool:
    """Return True when the file name ends in one of IMAGE_EXTENSIONS (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_image(path: StrPath) -> np.ndarray:
    """Load an image file as an upright RGB uint8 array of shape (H, W, 3)."""
    image = _open_upright(path)
    try:
        return _to_rgb(image)
    except ValueError as exc:
        raise ImageLoadError(path, f"unsupported colour mode {image.mode}: {exc}") from exc


def load_image_bounded(path: StrPath, max_side: int) -> np.ndarray:
    """Load like ``load_image``, shrunk (aspect kept) to at most ``max_side`` on the long side."""
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, not {max_side}")
    image = _open_upright(path, max_side)
    try:
        return _to_rgb(image)
    except ValueError as exc:
        raise ImageLoadError(path, f"unsupported colour mode {image.mode}: {exc}") from exc


def load_mask(path: StrPath, size: tuple[int, int] | None = None) -> np.ndarray:
    """Load a ground-truth mask as bool (H, W), True where > 0; ``size`` is (height, width)."""
    mask = _mask_values(_open_upright(path), path) > 0
    if size is None or mask.shape == tuple(size):
        return mask
    height, width = size
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (width, height), Image.Resampling.NEAREST
    )
    return np.asarray(resized) > 0


def _open_upright(path: StrPath, max_side: int | None = None) -> Image.Image:
    """Open, fully decode and EXIF-rotate an image, mapping every failure to ImageLoadError;
    with ``max_side``, shrink it so its longest side is at most that."""
    file = Path(path)
    _check_is_readable_file(file)
    try:
        # zsad says once, in its own words, what it does with a very large image.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as opened:
                _note_large(file, opened.size, max_side)
                if max_side is not None:
                    # JPEG decodes at 1/2, 1/4 or 1/8 scale (no-op for other formats), so a
                    # 144 MP frame costs a few MB instead of its full size.
                    opened.draft(None, _fit(opened.size, max_side))
                # load() inside the try: Image.open only parses the header, so a truncated
                # or corrupt body would otherwise fail much later, far from the path.
                opened.load()
                orientation = opened.getexif().get(ExifTags.Base.Orientation, 1)
                image = opened
                if max_side is not None and max(image.size) > max_side:
                    image = _shrink(image, max_side)
        # Transposed by hand, after shrinking: ImageOps.exif_transpose copies even an upright
        # image, a second full-size copy.
        method = _UPRIGHT.get(orientation)
        return image if method is None else image.transpose(method)
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(
            file, f"too many pixels, refused as a decompression bomb: {exc}"
        ) from exc
    except PermissionError as exc:
        raise ImageLoadError(file, "permission denied") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(file, "not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(file, f"corrupt or truncated file: {exc}") from exc


def _note_large(file: Path, size: tuple[int, int], max_side: int | None) -> None:
    """Say once per process, on stderr, that an image is over Pillow's decompression-bomb
    warning limit and what is done with it (larger ones, twice the limit, are refused)."""
    global _large_noted
    limit = Image.MAX_IMAGE_PIXELS
    width, height = size
    if _large_noted or limit is None or width * height <= limit:
        return
    _large_noted = True
    if max_side is not None and max(size) > max_side:
        done = f"decoded, then shrunk to {max_side} px on its longest side"
    else:
        done = f"decoded at full size ({width * height * 3 / 1e6:.0f} MB of RGB pixels)"
    echo_stderr(
        f"zsad: warning: {file}: {width * height / 1e6:.0f} MP image ({width}x{height}), over "
        f"the {limit / 1e6:.0f} MP at which Pillow warns of a decompression bomb; {done}; "
        f"images over {2 * limit / 1e6:.0f} MP are refused (said once)"
    )


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) scaled so the longest side is ``max_side`` (never below 1 pixel)."""
    width, height = size
    scale = max_side / max(width, height, 1)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    """A decoded image resized so its longest side is ``max_side``, in a mode _to_rgb reads the
    same way as the full-size image."""
    size = _fit(image.size, max_side)
    if image.mode.startswith(("I", "F")):
        # Box averaging never leaves the input's range, so 16-bit data still scales as 16-bit.
        return image.resize(size, Image.Resampling.BOX)
    if image.mode not in _DIRECT_MODES:
        # Palette and 1-bit images would otherwise be resized by nearest neighbour. RGB and L
        # are resized as they are: converting would hold a second full-size copy.
        image = _drop_alpha(image).convert("RGB")
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def _check_is_readable_file(file: Path) -> None:
    """Raise ImageLoadError with a specific reason for paths that are not non-empty files."""
    if not file.exists():
        raise ImageLoadError(file, "no such file")
    if file.is_dir():
        raise ImageLoadError(file, "is a directory")
    if file.stat().st_size == 0:
        raise ImageLoadError(file, "file is empty")


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any mode to an RGB uint8 array."""
    if image.mode.startswith(("I", "F")):
        gray = _scale_to_uint8(np.asarray(image), image.mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode not in _DIRECT_MODES:
        image = _drop_alpha(image).convert("RGB")
    return _rgb_pixels(image)


def _rgb_pixels(image: Image.Image) -> np.ndarray:
    """An RGB or L image as a new RGB uint8 array, copied a band of rows at a time: np.asarray
    of the whole image would hold two more full-size copies (tobytes' pieces and their join)."""
    width, height = image.size
    pixels = np.empty((height, width, 3), np.uint8)
    rows = max(1, _BAND_BYTES // (3 * max(width, 1)))
    for top in range(0, height, rows):
        band = np.asarray(image.crop((0, top, width, min(top + rows, height))))
        pixels[top : top + rows] = band if band.ndim == 3 else band[:, :, None]
    return pixels


def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map high-bit-depth grayscale onto 0..255 without clipping."""
    if mode.startswith("I;16") or (mode == "I" and _fits_uint16(values)):
        # Integer rounding of v * 255 / 65535 so that 65535 -> 255 and 257 * k -> k.
        scaled = (values.astype(np.uint32) * 255 + _UINT16_MAX // 2) // _UINT16_MAX
        return scaled.astype(np.uint8)
    return _stretch_to_uint8(values.astype(np.float64))


def _fits_uint16(values: np.ndarray) -> bool:
    """Return True when 32-bit integer data holds 16-bit samples (as 16-bit PNGs decode)."""
    return values.size == 0 or (values.min() >= 0 and values.max() <= _UINT16_MAX)


def _stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale float or wide-range data: [0, 1] data as is, anything else by its own range."""
    finite = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    span = high - low if high > low else 1.0
    return np.round((finite - low) / span * 255.0).astype(np.uint8)


def _mask_values(image: Image.Image, path: StrPath) -> np.ndarray:
    """Return a single-channel array whose non-zero entries mark anomalous pixels."""
    if image.mode in {"1", "L"} or image.mode.startswith(("I", "F")):
        # Thresholding the raw values keeps 16-bit masks that store 1 for anomalous intact.
        return np.asarray(image)
    try:
        return np.asarray(_drop_alpha(image).convert("L"))
    except ValueError as exc:
        raise ImageLoadError(path, f"unsupported colour mode {image.mode}: {exc}") from exc


def _drop_alpha(image: Image.Image) -> Image.Image:
    """Return the image without its alpha channel, keeping the stored colour."""
    # Going through RGBA stops palette transparency from triggering PIL warnings.
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return image.convert("RGBA").convert("RGB")
    return image


ImageInput = StrPath | Image.Image | np.ndarray


def as_rgb_array(image: ImageInput, max_side: int | None = None) -> np.ndarray:
    """An image given as a path, a PIL image or an (H, W[, 3|4]) array, as RGB uint8 (H, W, 3);
    a file is decoded to at most ``max_side`` pixels on its longest side when given."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image) if max_side is None else load_image_bounded(image, max_side)
    if isinstance(image, Image.Image):
        return _to_rgb(image)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or min(array.shape[:2]) < 1:
        raise ZsadError(f"image array of shape {array.shape}: expected (H, W, 3) RGB")
    if array.dtype != np.uint8:
        raise ZsadError(f"image array of dtype {array.dtype}: expected uint8 (0..255)")
    return np.ascontiguousarray(array[:, :, :3])


def decode_each(
    images: Iterable[ImageInput],
    max_side: int | None = None,
    positions: Sequence[int] | None = None,
) -> Iterator[np.ndarray | str]:
    """Each input as RGB uint8 (``as_rgb_array``), in order, one at a time; an input that cannot
    be decoded yields the one-line reason instead, naming it by its place in ``positions``
    (default: 0, 1, 2 ...)."""
    for index, image in enumerate(images):
        try:
            yield as_rgb_array(image, max_side)
        except ImageLoadError as exc:
            yield str(exc)
        except ZsadError as exc:
            yield f"input {index if positions is None else positions[index]}: {exc}"
