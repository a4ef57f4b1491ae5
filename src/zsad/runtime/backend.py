"""The one interface every encoder backend implements: normalised pixels in, named arrays out."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class EncoderBackend(Protocol):
    """Runs the image encoder; outputs are named 'cls', 'taps' and/or 'local' as NumPy arrays."""

    image_size: int
    outputs: tuple[str, ...]
    name: str
    mean: tuple[float, float, float]  # the normalisation the encoder was trained with
    std: tuple[float, float, float]

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Encode a float32 batch (B, 3, S, S) and return the outputs this backend was built for."""
        ...
