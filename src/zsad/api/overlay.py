"""Heatmap overlays people can look at: a perceptual colour map blended over the input image.

Saved overlays are at most ``OVERLAY_MAX_SIDE`` pixels on their longest side: blending costs about
100 bytes per pixel, so a full-size overlay of a 144 MP frame would need 14 GB, and a person looks
at the PNG on a screen anyway. Smaller images are enlarged to ``OVERLAY_MIN_SIDE`` so the legend
under the image (the image's score and a colour bar labelled with the range it maps) stays legible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from zsad.formats.atomic import atomic_open

OVERLAY_MAX_SIDE = 1024
OVERLAY_MIN_SIDE = 256

# Anchor colours of a turbo-like map (dark blue -> cyan -> green -> yellow -> red).
_ANCHORS = np.array(
    [
        [48, 18, 59],
        [70, 131, 247],
        [27, 229, 181],
        [164, 252, 60],
        [251, 185, 56],
        [227, 78, 14],
        [122, 4, 3],
    ],
    dtype=np.float32,
)


def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) -> RGB uint8 (H, W, 3)."""
    x = np.clip(values, 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.minimum(np.floor(x).astype(int), len(_ANCHORS) - 2)
    frac = (x - lo)[..., None]
    rgb = _ANCHORS[lo] * (1.0 - frac) + _ANCHORS[lo + 1] * frac
    return rgb.round().astype(np.uint8)


def overlay(image: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Blend the colourised map (any size) over an RGB uint8 image of its own size."""
    height, width = image.shape[:2]
    scaled = (np.asarray(anomaly_map, np.float32) - vmin) / max(vmax - vmin, 1e-12)
    scaled = np.asarray(
        Image.fromarray(scaled, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    )
    scaled = np.clip(scaled, 0.0, 1.0)
    # Weight the heat by the score so normal regions keep the photo readable.
    alpha = (0.25 + 0.5 * scaled)[..., None]
    blended = image.astype(np.float32) * (1.0 - alpha) + colorize(scaled) * alpha
    return blended.round().astype(np.uint8)


def fit_image(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """An RGB uint8 image shrunk (aspect kept) so its longest side is at most ``max_side``."""
    height, width = image.shape[:2]
    longest = max(height, width)
    if max_side is None or longest <= max_side:
        return image
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(small)


def legend_height(width: int) -> int:
    """Height in pixels of the legend band under an overlay ``width`` pixels wide."""
    return max(24, round(width * 0.06))


def with_legend(
    blended: np.ndarray, vmin: float, vmax: float, score: float | None = None
) -> np.ndarray:
    """The overlay with a band under it: the image's score, then the colour bar from ``vmin``
    (left) to ``vmax`` (right), the map values each end's colour stands for."""
    height, width = blended.shape[:2]
    band = legend_height(width)
    font = ImageFont.load_default(size=round(band * 0.45))
    canvas = Image.new("RGB", (width, height + band), (255, 255, 255))
    canvas.paste(Image.fromarray(blended), (0, 0))
    draw = ImageDraw.Draw(canvas)
    pad = band // 4
    middle = height + band / 2
    x = pad
    texts = [] if score is None else [f"score {score:.4g}"]
    texts += ["map", f"{vmin:.3g}"]
    for text in texts:
        draw.text((x, middle), text, fill=(0, 0, 0), font=font, anchor="lm")
        x += round(draw.textlength(text, font=font)) + pad
    high = f"{vmax:.3g}"
    bar_end = width - pad * 2 - round(draw.textlength(high, font=font))
    if bar_end - x >= band:
        ramp = colorize(np.linspace(0.0, 1.0, bar_end - x, dtype=np.float32)[None, :])
        bar_height = band - 2 * pad
        canvas.paste(Image.fromarray(np.repeat(ramp, bar_height, axis=0)), (x, height + pad))
        x = bar_end + pad
    draw.text((x, middle), high, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(canvas)


def save_overlay(
    path: Path,
    image: np.ndarray,
    anomaly_map: np.ndarray,
    vmin: float,
    vmax: float,
    *,
    score: float | None = None,
    max_side: int | None = OVERLAY_MAX_SIDE,
) -> None:
    """Write the overlay PNG atomically, with its legend; the image part is at most ``max_side``
    and at least ``OVERLAY_MIN_SIDE`` pixels on its longest side."""
    fitted = fit_image(image, max_side)
    if max(fitted.shape[:2]) < OVERLAY_MIN_SIDE:
        scale = OVERLAY_MIN_SIDE / max(fitted.shape[:2])
        size = (round(fitted.shape[1] * scale), round(fitted.shape[0] * scale))
        fitted = np.asarray(Image.fromarray(fitted).resize(size, Image.Resampling.BILINEAR))
    blended = with_legend(overlay(fitted, anomaly_map, vmin, vmax), vmin, vmax, score)
    with atomic_open(path, "wb") as handle:
        Image.fromarray(blended).save(handle, format="PNG")
