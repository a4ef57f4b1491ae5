"""Encode decoded images with any backend: preprocess, batch, collect per-image errors."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from zsad.arrays import module_of
from zsad.runtime.backend import EncoderBackend
from zsad.runtime.preprocess import preprocess_image


@dataclass
class EncodedImages:
    """Encoder outputs of the readable inputs, in input order, and why the others failed."""

    indices: list[int]  # positions in the input of the images that were encoded
    sizes: list[tuple[int, int]]  # (height, width) of each encoded original
    outputs: dict[str, Any]  # NumPy arrays, or CuPy from a backend with outputs on the device
    failures: list[tuple[int, str]] = field(default_factory=list)  # (input position, message)

    def __len__(self) -> int:
        return len(self.indices)


def encode_image(backend: EncoderBackend, image: np.ndarray) -> dict[str, np.ndarray]:
    """The encoder outputs of one RGB uint8 image (H, W, 3), as a batch of 1."""
    pixels = preprocess_image(image, backend.image_size, backend.mean, backend.std)
    return backend.run(pixels[None])


def encode_images(
    backend: EncoderBackend,
    images: Iterable[np.ndarray | str],
    *,
    count: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    half: tuple[str, ...] = (),
) -> EncodedImages:
    """Preprocess and encode RGB uint8 images (H, W, 3) in order; a string in an image's place
    is why that input could not be decoded (zsad.data.images.decode_each), kept as its failure.
    ``count``: how many ``images`` yields (default ``len(images)``). The outputs named in
    ``half`` are kept in float16 (half the memory), or float32 from the first value that
    float16 cannot hold."""
    total = len(images) if count is None else count  # type: ignore[arg-type]
    kept: list[int] = []
    sizes: list[tuple[int, int]] = []
    failures: list[tuple[int, str]] = []
    # Filled in place: at N = 200 ViT-L taps are 4.5 GB, so never hold a second copy. The set's
    # arrays live where the backend's outputs do, so outputs on the GPU are only copied there.
    outputs: dict[str, Any] = {}
    pending: list[np.ndarray] = []

    def flush() -> None:
        start = len(kept) - len(pending)
        for name, value in backend.run(np.stack(pending)).items():
            xp = module_of(value)
            if name not in outputs:
                dtype = xp.float16 if name in half else value.dtype
                outputs[name] = xp.empty((total, *value.shape[1:]), dtype)
            if outputs[name].dtype == xp.float16 and not _fits_half(xp, value):
                outputs[name] = outputs[name].astype(xp.float32)
            outputs[name][start : start + len(value)] = value
        pending.clear()

    bar = tqdm(images, total=total, desc="encoding", unit="img", disable=not progress, leave=False)
    for index, image in enumerate(bar):
        if isinstance(image, str):
            failures.append((index, image))
            continue
        kept.append(index)
        sizes.append(image.shape[:2])
        pending.append(preprocess_image(image, backend.image_size, backend.mean, backend.std))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    outputs = {name: value[: len(kept)] for name, value in outputs.items()}
    return EncodedImages(kept, sizes, outputs, failures)


def _fits_half(xp: Any, value: Any) -> bool:
    """Whether float16 holds every value (its largest finite value is 65504)."""
    return bool(xp.abs(value).max() <= np.finfo(np.float16).max)
