"""Heatmap overlays people can look at: a perceptual colour map blended over the input image.

Saved overlays are at most ``OVERLAY_MAX_SIDE`` pixels on their longest side: blending costs about
100 bytes per pixel, so a full-size overlay of a 144 MP frame would need 14 GB, and a person looks
at the PNG on a screen anyway.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from zsad.formats.atomic import atomic_open

OVERLAY_MAX_SIDE = 1024

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


def save_overlay(
    path: Path,
    image: np.ndarray,
    anomaly_map: np.ndarray,
    vmin: float,
    vmax: float,
    *,
    max_side: int | None = OVERLAY_MAX_SIDE,
) -> None:
    """Write the overlay PNG atomically, at most ``max_side`` pixels on its longest side."""
    blended = overlay(fit_image(image, max_side), anomaly_map, vmin, vmax)
    with atomic_open(path, "wb") as handle:
        Image.fromarray(blended).save(handle, format="PNG")
