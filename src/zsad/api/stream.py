"""A Stream: images scored one at a time in arrival order, the one path from a frame to a Result
for a rolling bank (MuSc/STAPS) or HeadCLIP image by image. `zsad watch`, `zsad infer --stream`
and the benches score through it."""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from zsad.api.results import Result, decide
from zsad.api.scorers import Scored, StreamScorer
from zsad.data.images import ImageInput
from zsad.errors import ZsadError


class Encoder(Protocol):
    """What a Stream needs of its Detector: the encoder, its input size and its notes."""

    backend: Any
    image_size: int

    def encode_one(self, image: ImageInput) -> dict[str, np.ndarray]:
        """The encoder outputs of one image (a batch of 1)."""
        ...

    def note(self, line: str) -> None:
        """Keep a line a user should know (once)."""
        ...


def image_label(image: ImageInput) -> str | None:
    """What a Result's ``path`` says of an input: the path of a file, None for pixels."""
    return str(image) if isinstance(image, (str, os.PathLike)) else None


class Stream:
    """Images in arrival order; ``add`` returns the images scored by that call (MuSc/STAPS hold
    the first ``bank`` images and score them together once the bank is full).

    ``add`` is ``score(encode(image))``: a caller that must tell the two steps apart (a
    station retrying a remote encoder) calls them in turn; ``encode`` changes nothing here.
    """

    def __init__(
        self,
        detector: Encoder,
        scorer: StreamScorer,
        settings: dict[str, Any],
        threshold: float | None,
    ) -> None:
        self.detector = detector
        self.scorer = scorer
        self.settings = settings
        self.threshold = threshold  # may change between images (an operator's new threshold)
        self.next_index = 0  # the arrival position the next image gets
        self._labels: dict[int, str | None] = {}
        self._unsaid: list[str] = []

    def add(self, image: ImageInput, *, label: str | None = None) -> list[Result]:
        """Take the next image; returns the results this made available (maybe none, or several).
        ``label`` names it in its Result (default: its path, None for pixels)."""
        outputs = self.encode(image)
        return self.score(outputs, image_label(image) if label is None else label)

    def encode(self, image: ImageInput) -> dict[str, np.ndarray]:
        """The encoder outputs of one image (a batch of 1), decoded at a bounded size."""
        return self.detector.encode_one(image)

    def score(
        self, outputs: dict[str, np.ndarray], label: str | None, *, index: int | None = None
    ) -> list[Result]:
        """Score one encoded image as the next arrival, or at arrival position ``index`` (an
        image held for warm-up before a restart, held again)."""
        position = self.next_index if index is None else index
        self.next_index = max(self.next_index, position + 1)
        self._labels[position] = label
        return self._results(self.scorer.add(outputs, position))

    def restore(
        self, outputs: dict[str, np.ndarray], index: int, raw_score: float, score: float
    ) -> None:
        """Put an image scored before a restart back into the bank (its scores as recorded)."""
        self.scorer.restore(outputs, index, raw_score, score)
        self.next_index = max(self.next_index, index + 1)

    def flush(self) -> list[Result]:
        """Score the images still held (the end of a finite stream shorter than the bank)."""
        try:
            scored = self.scorer.flush()
        except ValueError as exc:
            raise ZsadError(f"stream: {exc}") from exc
        return self._results(scored)

    def take_notes(self) -> list[str]:
        """What a user should know that was not returned here before (an alignment report)."""
        said, self._unsaid = self._unsaid, []
        return said

    def _results(self, scored: list[Scored]) -> list[Result]:
        for note in self.scorer.notes():
            self.detector.note(note)
            self._unsaid.append(note)
        return [
            Result(
                self._labels.pop(s.position, None),
                s.score,
                s.anomaly_map,
                self.detector.image_size,
                decide(s.score, self.threshold),
                self.threshold,
                index=s.position,
                raw_score=s.raw_score,
                phase=s.phase,
            )
            for s in scored
        ]
