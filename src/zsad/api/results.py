"""What the Detector returns: small typed results that serialise to results.jsonl's records."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zsad.scoring.maps import upsample_maps


def decide(score: float, threshold: float | None) -> str | None:
    """NG when the score is above the threshold, else OK; None without a threshold."""
    return None if threshold is None else ("NG" if score > threshold else "OK")


@dataclass
class Result:
    """One image's outcome: its score, anomaly map and OK/NG decision, or why it has none."""

    path: str | None
    score: float | None
    patch_map: np.ndarray | None = field(default=None, repr=False)  # (h, w), any resolution
    image_size: int = 0  # the encoder's input size: the resolution of ``anomaly_map``
    decision: str | None = None  # "OK"/"NG" when a threshold is set
    threshold: float | None = None
    index: int | None = None  # arrival position on a stream
    error: str | None = None

    @property
    def anomaly_map(self) -> np.ndarray | None:
        """The map at the encoder's input resolution (S, S), float32; higher = more anomalous."""
        if self.patch_map is None:
            return None
        if self.patch_map.shape == (self.image_size, self.image_size):
            return self.patch_map.astype(np.float32, copy=False)
        return upsample_maps(self.patch_map[None], self.image_size)[0]

    @property
    def ok(self) -> bool:
        """Whether it was scored (a failed image has an ``error`` instead)."""
        return self.error is None

    def to_record(self, **files: Any) -> dict[str, Any]:
        """The results.jsonl record; ``files`` adds where the map and overlay were written."""
        record: dict[str, Any] = {
            "path": self.path,
            "score": self.score,
            "map": None,
            "error": self.error,
        }
        if self.decision is not None:
            record.update(decision=self.decision, threshold=self.threshold)
        if self.index is not None:
            record["index"] = self.index
        record.update(files)
        return record


@dataclass
class SetResult:
    """A scored set: one Result per input, in input order, and the scoring facts."""

    results: list[Result]
    info: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def scored(self) -> list[Result]:
        """The results that have a score."""
        return [r for r in self.results if r.ok]

    @property
    def failures(self) -> list[Result]:
        """The inputs that could not be read."""
        return [r for r in self.results if not r.ok]

    @property
    def scores(self) -> np.ndarray:
        """Scores of the scored images, in input order."""
        return np.array([r.score for r in self.scored], np.float64)

    def map_range(self) -> tuple[float, float]:
        """(min, max) over all maps: one colour scale for every overlay of the set."""
        maps = [r.patch_map for r in self.scored if r.patch_map is not None]
        if not maps:
            return (0.0, 1.0)
        return (float(min(m.min() for m in maps)), float(max(m.max() for m in maps)))

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[Result]:
        return iter(self.results)
