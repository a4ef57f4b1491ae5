"""Encode images with any backend: decode, preprocess, batch, collect per-image errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from zsad.data.images import ImageInput, ImageLoadError, as_rgb_array
from zsad.errors import ZsadError
from zsad.runtime.backend import EncoderBackend
from zsad.runtime.preprocess import decode_side, preprocess_image
from zsad.scoring._xp import module_of


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
    images: Sequence[ImageInput],
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> EncodedImages:
    """Decode, preprocess and encode images (paths, PIL images or arrays); bad ones are noted."""
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
            if name not in outputs:
                xp = module_of(value)
                outputs[name] = xp.empty((len(images), *value.shape[1:]), value.dtype)
            outputs[name][start : start + len(value)] = value
        pending.clear()

    for index, item in enumerate(
        tqdm(images, desc="encoding", unit="img", disable=not progress, leave=False)
    ):
        try:
            image = as_rgb_array(item, decode_side(backend.image_size))
        except ImageLoadError as exc:
            failures.append((index, str(exc)))
            continue
        except ZsadError as exc:
            failures.append((index, f"input {index}: {exc}"))
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
