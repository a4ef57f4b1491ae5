"""What the Detector returns: small typed results, and the one record schema of results.jsonl
(docs/records.md)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np

from zsad.errors import ZsadError
from zsad.scoring.maps import upsample_maps

# The version of the results.jsonl record; bumped whenever a field changes meaning or goes.
RECORD_SCHEMA = 2
# Every field of a record, in the order written (``id`` first: the line number).
RECORD_FIELDS = (
    "id",
    "schema",
    "index",
    "path",
    "name",
    "size",
    "mtime_ns",
    "part_id",
    "score",
    "raw_score",
    "decision",
    "threshold",
    "phase",
    "subset",
    "set_size",
    "map",
    "overlay",
    "frame",
    "error",
    "rejected_to",
    "time",
    "timing",
)
REJECTED = "rejected"  # the decision of a file that never decoded


def decide(score: float, threshold: float | None) -> str | None:
    """NG when the score is above the threshold, else OK; None without a threshold."""
    return None if threshold is None else ("NG" if score > threshold else "OK")


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds: a record's ``time``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def read_record(record: Mapping[str, Any], where: str = "results.jsonl") -> dict[str, Any]:
    """A results.jsonl record in the current schema: one written before ``schema`` existed
    (version 1) gets every field it lacks as null; a newer version is a one-line error."""
    version = record.get("schema", 1)
    if not isinstance(version, int) or version > RECORD_SCHEMA:
        raise ZsadError(
            f"{where}: record schema {version!r} is newer than this zsad reads "
            f"({RECORD_SCHEMA}); upgrade zsad"
        )
    return {**dict.fromkeys(RECORD_FIELDS), **record, "schema": version}


class FileFacts(Protocol):
    """Which version of a file a record is about: its name, size and modification time."""

    name: str
    size: int
    mtime_ns: int


@dataclass
class Result:
    """One image's outcome: its score, anomaly map and OK/NG decision, or why it has none."""

    path: str | None
    score: float | None
    patch_map: np.ndarray | None = field(default=None, repr=False)  # (h, w), any resolution
    image_size: int = 0  # the encoder's input size: the resolution of ``anomaly_map``
    decision: str | None = None  # "OK"/"NG" when a threshold is set; "rejected" by a station
    threshold: float | None = None
    index: int | None = None  # position in the input: in a set, or arrival order on a stream
    error: str | None = None
    raw_score: float | None = None  # the image score before RsCIN/STAS (the map's maximum)
    phase: str | None = None  # "set", or on a stream "warm-up"/"stream"
    subset: int | None = None  # in a set: the subset it was scored with (0 for a whole set)
    set_size: int | None = None  # MuSc/STAPS: how many images it was scored against each other with

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

    def to_record(
        self,
        *,
        map: str | None = None,  # noqa: A002 (the record's field name)
        overlay: str | None = None,
        file: FileFacts | None = None,
        rejected_to: str | None = None,
        timing: dict[str, float] | None = None,
        part_id: str | None = None,
        frame: str | None = None,
    ) -> dict[str, Any]:
        """The results.jsonl record (schema ``RECORD_SCHEMA``, without the ``id`` the writer
        adds); ``map``/``overlay``/``frame`` are where those files are, relative to OUT."""
        return {
            "schema": RECORD_SCHEMA,
            "index": self.index,
            "path": self.path,
            "name": None if file is None else file.name,
            "size": None if file is None else file.size,
            "mtime_ns": None if file is None else file.mtime_ns,
            "part_id": part_id,
            "score": self.score,
            "raw_score": self.raw_score,
            "decision": self.decision,
            "threshold": self.threshold,
            "phase": self.phase,
            "subset": self.subset,
            "set_size": self.set_size,
            "map": map,
            "overlay": overlay,
            "frame": frame,
            "error": self.error,
            "rejected_to": rejected_to,
            "time": now_iso(),
            "timing": timing,
        }


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
