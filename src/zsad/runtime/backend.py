"""The one interface every encoder backend implements: normalised pixels in, named arrays out,
and a lifecycle (``close``, or ``with``) that gives back sessions and GPU memory."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from zsad.errors import ZsadError


class EncoderBackend(Protocol):
    """Runs the image encoder; outputs are named 'cls', 'taps' and/or 'local': float32 NumPy
    arrays, or CuPy arrays on the GPU from a backend opened with ``outputs_on="device"``."""

    image_size: int
    outputs: tuple[str, ...]
    name: str
    mean: tuple[float, float, float]  # the normalisation the encoder was trained with
    std: tuple[float, float, float]

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Encode a float32 batch (B, 3, S, S) and return the outputs this backend was built for."""
        ...

    def close(self) -> None:
        """Release the backend's resources; ``run`` must not be called afterwards."""
        ...

    def __enter__(self) -> EncoderBackend: ...

    def __exit__(self, *exc: object) -> None: ...


class Lifecycle:
    """``with backend:`` calls ``close`` on the way out; mixed into every backend."""

    def close(self) -> None:
        """Release the backend's resources (nothing by default)."""

    def __enter__(self):  # noqa: ANN204 - returns the concrete backend
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def checked_pixels(pixels: np.ndarray, image_size: int, what: str) -> np.ndarray:
    """``pixels`` as a contiguous float32 (B, 3, S, S) batch, or a one-line error naming ``what``
    (this bundle, this engine, this model) and the shape it takes."""
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if pixels.ndim != 4 or pixels.shape[1:] != (3, image_size, image_size):
        raise ZsadError(
            f"input of shape {pixels.shape}: {what} takes (B, 3, {image_size}, {image_size})"
        )
    return pixels
