"""encode_images: batching, per-input failures, outputs aligned with the inputs that were read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from zsad.data.images import decode_each
from zsad.runtime.encode import encode_images


class MeanBackend:
    """A backend whose 'cls' is each image's mean pixel, so alignment can be checked."""

    image_size = 28
    outputs = ("cls",)
    name = "mean"
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self) -> None:
        self.batches: list[int] = []

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append(len(pixels))
        return {"cls": pixels.mean(axis=(1, 2, 3))[:, None]}


def test_failures_are_skipped_and_outputs_stay_aligned(tmp_path: Path) -> None:
    paths = []
    for i in range(7):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((20, 30, 3), 30 * i, np.uint8)).save(path)
        paths.append(path)
    (tmp_path / "bad.png").write_text("nope")
    paths.insert(3, tmp_path / "bad.png")
    backend = MeanBackend()
    encoded = encode_images(
        backend, decode_each(paths), count=len(paths), batch_size=3, progress=False
    )
    assert encoded.indices == [i for i, p in enumerate(paths) if p.name != "bad.png"]
    assert [(i, paths[i].name) for i, _ in encoded.failures] == [(3, "bad.png")]
    assert "bad.png" in encoded.failures[0][1]
    assert encoded.sizes == [(20, 30)] * 7
    assert backend.batches == [3, 3, 1]
    means = encoded.outputs["cls"][:, 0]
    assert means.shape == (7,)
    assert np.all(np.diff(means) > 0)  # image i is brighter than image i-1, in input order
    # The backend's own normalisation is applied: pixel value 0 -> (0 - 0.5) / 0.25.
    assert means[0] == -2.0


def test_half_outputs_stay_float32_once_a_value_overflows_float16() -> None:
    images = [np.full((20, 30, 3), value, np.uint8) for value in (0, 100, 255)]
    backend = MeanBackend()
    encoded = encode_images(backend, images, batch_size=1, progress=False, half=("cls",))
    assert encoded.outputs["cls"].dtype == np.float16
    np.testing.assert_allclose(encoded.outputs["cls"][:, 0], [-2.0, -0.431, 2.0], atol=1e-3)

    class LoudBackend(MeanBackend):
        def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
            return {"cls": 1e5 * super().run(pixels)["cls"]}

    # The first image fits float16 (-43137), the second does not (-2e5): the kept one is carried.
    loud = [images[1], images[0], images[2]]
    encoded = encode_images(LoudBackend(), loud, batch_size=1, progress=False, half=("cls",))
    assert encoded.outputs["cls"].dtype == np.float32
    np.testing.assert_allclose(encoded.outputs["cls"][:, 0], [-43137.25, -2e5, 2e5], rtol=1e-3)
