"""Scorers for each method: a set scorer (a batch of encoded images) and a stream scorer (one
image at a time, in arrival order); ``SCORERS`` gives each registered method its two."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from zsad.arrays import to_numpy
from zsad.errors import ZsadError
from zsad.formats.artifact import HeadclipArtifact
from zsad.runtime.encode import EncodedImages
from zsad.scoring.headclip import score_headclip
from zsad.scoring.maps import patch_grid
from zsad.scoring.pipeline import SetScoringConfig, score_set
from zsad.scoring.stream import RollingStaps

# (image scores (N,), maps (N, h, w) at any resolution, facts for the summary)
SetScores = tuple[np.ndarray, np.ndarray, dict[str, Any]]
SetScorer = Callable[[EncodedImages], SetScores]

# Scoring settings a streamed STAPS score depends on (not where or how fast it runs): stored with
# a threshold, so a station can tell when its threshold no longer fits.
STAPS_SCORE_SETTINGS = (
    "r_list",
    "topmin_max",
    "align_window",
    "rscin_k",
    "image_score",
    "use_stas",
    "window",
    "gamma",
    "alpha",
    "stas_k",
    "beta",
    "stas_semantic",
)


@dataclass(frozen=True)
class MethodOptions:
    """The scoring choices of every method; each method reads its own."""

    scoring: SetScoringConfig = field(default_factory=SetScoringConfig)
    jas_r: float | None = None  # HeadCLIP: None = the artifact's
    top_k: float | None = None
    # HeadCLIP's local path is fixed by training: None takes the artifact's, a value must match it.
    local_path: str | None = None
    csa_layers: tuple[int, ...] | None = None
    readout_layers: tuple[int, ...] | None = None


@dataclass(frozen=True)
class HeadclipScoring:
    """HeadCLIP's per-image scoring: JAS image score and blurred pixel map from the artifact."""

    artifact: HeadclipArtifact
    image_size: int
    r: float
    top_k: float

    @classmethod
    def from_artifact(
        cls, artifact: HeadclipArtifact, image_size: int, options: MethodOptions
    ) -> HeadclipScoring:
        """The artifact's hyperparameters, with ``options`` overriding JAS r and top-k; a local
        path in ``options`` other than the artifact's is an error."""
        artifact.local_path.require(
            "the calibration artifact",
            local_path=options.local_path,
            csa_layers=options.csa_layers,
            readout_layers=options.readout_layers,
        )
        hp = artifact.hyperparameters
        r = hp["jas_r"] if options.jas_r is None else options.jas_r
        k = hp["top_k"] if options.top_k is None else options.top_k
        return cls(artifact, image_size, float(r), float(k))

    def __call__(self, cls: np.ndarray, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cls (N, D), local (N, L, P, D)) -> (image scores (N,), pixel maps (N, S, S))."""
        # JAS runs on NumPy: outputs a backend left on the GPU come over here (they are small).
        cls, local = to_numpy(cls), to_numpy(local)
        if local.ndim == 3:
            local = local[:, None]  # bundles exported before read-out blocks: one read-out
        hp = self.artifact.hyperparameters
        return score_headclip(
            cls,
            local,
            self.artifact.text_embeddings,
            image_size=self.image_size,
            r=self.r,
            top_k=self.top_k,
            temperature=hp["temperature"],
            sigma=hp["sigma"],
        )

    def settings(self) -> dict[str, Any]:
        """What a HeadCLIP score depends on."""
        return {
            "method": "headclip",
            "jas_r": self.r,
            "top_k": self.top_k,
            "backbone": self.artifact.backbone,
            "local_path": self.artifact.local_path.to_meta(),
        }


def staps_settings(scoring: SetScoringConfig, bank: int) -> dict[str, Any]:
    """What a streamed STAPS score depends on, in JSON types (stored with a threshold)."""
    values = asdict(scoring)
    settings = {"bank": bank, **{k: values[k] for k in STAPS_SCORE_SETTINGS}}
    return json.loads(json.dumps(settings))


def _first_failure(encoded: EncodedImages) -> str:
    """Why the first unreadable input failed, for an error about too few readable images."""
    if not encoded.failures:
        return ""
    more = len(encoded.failures) - 1
    return f" ({encoded.failures[0][1]}" + (f"; {more} more unreadable)" if more else ")")


def staps_set_scorer(
    method: str,
    options: MethodOptions,
    headclip: HeadclipScoring | None,
    progress: bool,
    image_size: int,
) -> tuple[SetScorer, dict[str, Any]]:
    """MuSc or STAPS over a set: every image against every other (at least 2); raw image
    scores from the maps at ``image_size``, the encoder's input size."""
    scoring = replace(options.scoring, method=method)

    def score(encoded: EncodedImages) -> SetScores:
        if len(encoded) < 2:
            raise ZsadError(
                f"{len(encoded)} readable image(s): mutual scoring needs at least 2"
                + _first_failure(encoded)
            )
        result = score_set(
            encoded.outputs["taps"],
            encoded.outputs["cls"],
            scoring,
            image_size=image_size,
            progress=progress,
        )
        info = {k: v for k, v in result.info.items() if k != "order"}
        return result.image_scores, result.patch_maps, info

    return score, asdict(scoring)


def headclip_set_scorer(
    method: str,
    options: MethodOptions,
    headclip: HeadclipScoring | None,
    progress: bool,
    image_size: int,
) -> tuple[SetScorer, dict[str, Any]]:
    """HeadCLIP over a set: each image on its own."""
    assert headclip is not None

    def score(encoded: EncodedImages) -> SetScores:
        if not len(encoded):
            raise ZsadError("no readable images to score" + _first_failure(encoded))
        scores, maps = headclip(encoded.outputs["cls"], encoded.outputs["local"])
        return scores, maps, {"method": "headclip"}

    return score, headclip.settings()


def _rolling_scorer(
    scoring: SetScoringConfig, bank: int, image_size: int
) -> tuple[StreamScorer, dict[str, Any]]:
    rolling = RollingStaps(scoring, bank, image_size)
    return RollingScorer(rolling), staps_settings(scoring, bank)


def staps_stream_scorer(
    options: MethodOptions, headclip: HeadclipScoring | None, bank: int, image_size: int
) -> tuple[StreamScorer, dict[str, Any]]:
    """STAPS against a rolling bank of the last ``bank`` images (STAS as configured)."""
    return _rolling_scorer(replace(options.scoring, method="staps"), bank, image_size)


def musc_stream_scorer(
    options: MethodOptions, headclip: HeadclipScoring | None, bank: int, image_size: int
) -> tuple[StreamScorer, dict[str, Any]]:
    """MuSc against a rolling bank of the last ``bank`` images: RsCIN-like scores, no STAS."""
    scoring = replace(options.scoring, method="musc", use_stas=False)
    return _rolling_scorer(scoring, bank, image_size)


def headclip_stream_scorer(
    options: MethodOptions, headclip: HeadclipScoring | None, bank: int, image_size: int
) -> tuple[StreamScorer, dict[str, Any]]:
    """HeadCLIP one image at a time (no bank)."""
    assert headclip is not None
    return HeadclipScorer(headclip), headclip.settings()


SetFactory = Callable[
    [str, MethodOptions, HeadclipScoring | None, bool, int], tuple[SetScorer, dict[str, Any]]
]
StreamFactory = Callable[
    [MethodOptions, HeadclipScoring | None, int, int], tuple["StreamScorer", dict[str, Any]]
]


@dataclass
class Scored:
    """One image scored by a stream scorer: its arrival position, scores and map."""

    position: int
    score: float
    raw_score: float
    anomaly_map: np.ndarray  # (h, w): the patch grid, or pixels
    phase: str


class StreamScorer(Protocol):
    """Scores images in arrival order; STAPS holds images during warm-up, HeadCLIP never does."""

    method: str
    restore_count: int  # scored images to put back after a restart

    def add(self, outputs: dict[str, np.ndarray], position: int) -> list[Scored]:
        """Score one image's encoder outputs (batch of 1); returns the images scored now."""
        ...

    def flush(self) -> list[Scored]:
        """Score whatever is held (end of a finite stream)."""
        ...

    def restore(
        self, outputs: dict[str, np.ndarray], position: int, raw_score: float, score: float
    ) -> None:
        """Put an image scored before a restart back into the scorer's memory."""
        ...

    def held(self) -> int:
        """Images received and not yet scored."""
        ...

    def warming_up(self) -> bool:
        """True until the first images are scored (a bank still filling, perhaps still empty)."""
        ...

    def map_range(self) -> tuple[float, float] | None:
        """Fixed overlay colour range, so overlays compare across the run."""
        ...

    def state(self) -> dict[str, Any]:
        """Small JSON state a restart needs."""
        ...

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore ``state()``."""
        ...

    def describe(self) -> dict[str, Any]:
        """Settings and memory facts for status.json."""
        ...

    def notes(self) -> list[str]:
        """Lines a user should see (e.g. the alignment report), each returned once."""
        ...


class RollingScorer:
    """MuSc or STAPS against a rolling bank (see zsad.scoring.stream)."""

    def __init__(self, rolling: RollingStaps) -> None:
        self.rolling = rolling
        self.method = rolling.config.method
        self.restore_count = rolling.bank

    def _scored(self, results: list[Any]) -> list[Scored]:
        return [
            Scored(r.position, r.score, r.raw_score, patch_grid(r.patch_map), r.phase)
            for r in results
        ]

    def add(self, outputs: dict[str, np.ndarray], position: int) -> list[Scored]:
        """Score one image against the bank (or hold it during warm-up)."""
        # Taps on the GPU go to the bank as they are; the small CLS vector is kept on the host.
        taps, cls = outputs["taps"][0], to_numpy(outputs["cls"][0])
        return self._scored(self.rolling.add(taps, cls, position))

    def flush(self) -> list[Scored]:
        """Score the warm-up images held so far."""
        return self._scored(self.rolling.flush())

    def restore(
        self, outputs: dict[str, np.ndarray], position: int, raw_score: float, score: float
    ) -> None:
        """Refill the bank with an image scored before the restart."""
        self.rolling.restore(
            outputs["taps"][0], to_numpy(outputs["cls"][0]), position, raw_score, score
        )

    def held(self) -> int:
        """Warm-up images waiting for the bank to fill."""
        return self.rolling.filled if self.rolling.warming_up else 0

    def warming_up(self) -> bool:
        """True until the bank has filled and its images are scored."""
        return self.rolling.warming_up

    def map_range(self) -> tuple[float, float] | None:
        """The warm-up set's map range."""
        return self.rolling.map_range

    def state(self) -> dict[str, Any]:
        """BGMPS weights and the overlay range."""
        return self.rolling.state()

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore the BGMPS weights and the overlay range."""
        self.rolling.load_state(state)

    def describe(self) -> dict[str, Any]:
        """Bank size, fill and memory."""
        per_image = self.rolling.bytes_per_image()
        facts = {
            "method": self.method,
            "bank": self.rolling.bank,
            "bank_filled": self.rolling.filled,
            "bank_mb_per_image": round(per_image / 2**20, 3),
            "bank_mb": round(per_image * self.rolling.bank / 2**20, 1),
        }
        if self.rolling.alignment is not None:
            facts["alignment"] = self.rolling.alignment
        return facts

    def notes(self) -> list[str]:
        """The alignment report of the warm-up set (aligned MSM only), once."""
        return self.rolling.notes()


class HeadclipScorer:
    """HeadCLIP: every image on its own, JAS image score and a blurred pixel map."""

    method = "headclip"
    restore_count = 0

    def __init__(self, score: HeadclipScoring) -> None:
        self._score = score

    def add(self, outputs: dict[str, np.ndarray], position: int) -> list[Scored]:
        """Score one image."""
        scores, maps = self._score(outputs["cls"], outputs["local"])
        return [Scored(position, float(scores[0]), float(scores[0]), maps[0], "stream")]

    def flush(self) -> list[Scored]:
        """Nothing is ever held."""
        return []

    def restore(
        self, outputs: dict[str, np.ndarray], position: int, raw_score: float, score: float
    ) -> None:
        """Nothing to restore."""

    def held(self) -> int:
        """Nothing is ever held."""
        return 0

    def warming_up(self) -> bool:
        """No warm-up: the first image is scored on arrival."""
        return False

    def map_range(self) -> tuple[float, float] | None:
        """Maps are (1 - P_normal + P_abnormal) / 2, in [0, 1]."""
        return (0.0, 1.0)

    def state(self) -> dict[str, Any]:
        """No state."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """No state."""

    def describe(self) -> dict[str, Any]:
        """The method."""
        return {"method": "headclip"}

    def notes(self) -> list[str]:
        """Nothing to report."""
        return []


# Each method of zsad.formats.methods.METHODS: (its set scorer, its stream scorer).
SCORERS: dict[str, tuple[SetFactory, StreamFactory]] = {
    "musc": (staps_set_scorer, musc_stream_scorer),
    "staps": (staps_set_scorer, staps_stream_scorer),
    "headclip": (headclip_set_scorer, headclip_stream_scorer),
}
