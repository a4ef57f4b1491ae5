"""encode_paths: batching, per-file failures, and outputs aligned with the files that were read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from zsad.runtime.encode import encode_paths


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
    encoded = encode_paths(backend, paths, batch_size=3, progress=False)
    assert encoded.paths == [p for p in paths if p.name != "bad.png"]
    assert [p.name for p, _ in encoded.failures] == ["bad.png"]
    assert encoded.sizes == [(20, 30)] * 7
    assert backend.batches == [3, 3, 1]
    means = encoded.outputs["cls"][:, 0]
    assert means.shape == (7,)
    assert np.all(np.diff(means) > 0)  # image i is brighter than image i-1, in input order
    # The backend's own normalisation is applied: pixel value 0 -> (0 - 0.5) / 0.25.
    assert means[0] == -2.0
