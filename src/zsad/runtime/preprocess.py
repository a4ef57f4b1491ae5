"""Image preprocessing in NumPy/Pillow, matching open_clip's resize + normalise for a fixed size."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

# OpenAI CLIP's normalisation, the one every open_clip "openai" checkpoint expects.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# Images are decoded to at most this many times the encoder's input size on the long side:
# enough for the encoder and an overlay to look at, and bounded whatever the camera writes.
DECODE_OVERSAMPLE = 4


def decode_side(image_size: int) -> int:
    """The longest side an image is decoded to for an encoder of ``image_size`` pixels."""
    return DECODE_OVERSAMPLE * image_size


def preprocess_image(
    image: np.ndarray,
    size: int,
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> normalised float32 (3, size, size), bicubic resize without crop."""
    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(resized, dtype=np.float32) / 255.0
    pixels = (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def preprocess_batch(
    images: Sequence[np.ndarray],
    size: int,
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
) -> np.ndarray:
    """Several RGB uint8 images -> one float32 batch (B, 3, size, size)."""
    return np.stack([preprocess_image(im, size, mean, std) for im in images])
