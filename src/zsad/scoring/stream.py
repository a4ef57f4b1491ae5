"""Streaming STAPS: each arriving image is scored against a rolling bank of the last K images.

Warm-up: the first K images are held and scored as one set once the bank is full (each against
the other K-1, as in batch STAPS); that also starts the EMA. Every later image is scored on
arrival and then takes the oldest image's place in the bank:

- The raw score is the configured image score of the fused map (default MuSc's: the maximum of
  the map upsampled to the encoder's input size ``image_size``), as in batch.
- MSM per expert (tap, r) against the K bank images, averaging its k = int(K * topmin) nearest
  images (aligned MSM with ``align_window``; the warm-up set then also gets the alignment check,
  kept in ``alignment`` and reported once through ``notes``). The bank is one preallocated
  ring (E, K, P, C) on the scoring device, in the dtype MSM multiplies in, so memory is flat
  and a GPU bank is never copied per image.
- The map is the mean of the expert maps (MuSc's fusion), not BGMPS: BGMPS picks the experts in
  which a *set's* anomalies stand out. A bank of mostly good parts has none, so a fit would pick
  experts by noise, and every refit would change the units of the score mid-run.
- STAS (when enabled): the new image's row of alpha*S + (1-alpha)*T over the bank and itself,
  with T taken from real arrival indices and S rescaled over the cosine matrix of the images in
  use (the filled bank slots and the new image; ``--stas-semantic clip``: max(cos, 0)); without
  STAS, the semantic part only with RsCIN's clipped cosine.
  Scores stay in raw distance units: propagation is affine-equivariant, so batch STAPS's
  min-max over the set is not needed, and a threshold means the same thing at any hour of the
  run. The EMA carries over from the previous image (and across restarts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from zsad.arrays import array_module
from zsad.scoring.aligned import alignment_check, alignment_report
from zsad.scoring.lnamd import lnamd
from zsad.scoring.maps import raw_image_scores
from zsad.scoring.msm import mutual_scores, working_dtype
from zsad.scoring.pipeline import SetScoringConfig
from zsad.scoring.stas import ema, propagate, semantic_temporal_affinity

PHASES = ("warm-up", "stream")


@dataclass(frozen=True)
class StreamResult:
    """One scored image: the decision score (after STAS and EMA), the raw score, the map."""

    position: int
    score: float
    raw_score: float
    patch_map: np.ndarray  # (P,) float32 fused patch scores
    phase: str


class RollingStaps:
    """STAPS over a stream: feed images with ``add`` in arrival order, get results back."""

    def __init__(self, config: SetScoringConfig, bank: int, image_size: int) -> None:
        if bank < 2:
            raise ValueError(f"the bank needs at least 2 images, got {bank}")
        self.config = config
        self.bank = bank
        self.image_size = image_size
        self.xp = array_module(config.device)
        self._dtype = working_dtype(self.xp)
        self._fill = 0
        self._next = 0
        self._ema: float | None = None
        self.map_range: tuple[float, float] | None = None
        self._features: Any = None  # (E, K, P, C) on the scoring device
        self.alignment: dict[str, Any] | None = None  # the warm-up set's alignment check
        self._notes: list[str] = []

    @property
    def warming_up(self) -> bool:
        """True until the first images have been scored (the bank is filling)."""
        return self._ema is None

    @property
    def filled(self) -> int:
        """Images in the bank."""
        return self._fill

    def bytes_per_image(self) -> int:
        """Bank memory per image: features of every expert, CLS and scores."""
        if self._features is None:
            return 0
        n_experts, _, patches, channels = self._features.shape
        return int(
            n_experts * patches * channels * self._features.dtype.itemsize
            + self._cls.shape[1] * 8
            + 16
        )

    def add(self, taps: np.ndarray, cls: np.ndarray, position: int) -> list[StreamResult]:
        """Take one image's encoder outputs; returns the images scored now (none while filling)."""
        features = self._lnamd(taps)
        if self.warming_up:
            self._push(features, cls, position)
            return self._score_held() if self._fill == self.bank else []
        result = self._score_one(features, cls, position)
        self._push(features, cls, position, result.raw_score)
        return [result]

    def flush(self) -> list[StreamResult]:
        """Score the images held during warm-up now (a stream that ends before K images)."""
        if not self.warming_up or self._fill == 0:
            return []
        if self._fill < 2:
            raise ValueError("mutual scoring needs at least 2 images; only 1 arrived")
        return self._score_held()

    def restore(
        self, taps: np.ndarray, cls: np.ndarray, position: int, raw_score: float, score: float
    ) -> None:
        """Put an already scored image back in the bank after a restart, oldest first."""
        self._push(self._lnamd(taps), cls, position, raw_score)
        self._ema = float(score)

    def notes(self) -> list[str]:
        """Lines a user should see (the alignment report), each returned once."""
        lines, self._notes = self._notes, []
        return lines

    def state(self) -> dict[str, Any]:
        """What a restart needs besides the bank: the overlay colour range."""
        return {"map_range": None if self.map_range is None else list(self.map_range)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore ``state()`` from an earlier run."""
        span = state.get("map_range")
        self.map_range = None if span is None else (float(span[0]), float(span[1]))

    # ------------------------------------------------------------------ internals

    def _lnamd(self, taps: np.ndarray) -> list[Any]:
        """(T, 1+P, C) tokens -> E unit features (P, C), experts ordered (tap, r) as in batch."""
        # The tokens go to the scoring device once. A list, not a stacked array: each expert is
        # copied once, straight into the ring.
        tokens = self.xp.asarray(taps)
        return [
            lnamd(tokens[None, t], r)[0] for t in range(tokens.shape[0]) for r in self.config.r_list
        ]

    def _allocate(self, features: list[Any], cls: np.ndarray) -> None:
        n_experts, (patches, channels) = len(features), features[0].shape
        k = self.bank
        self._features = self.xp.empty((n_experts, k, patches, channels), self._dtype)
        self._cls = np.zeros((k, cls.shape[-1]), np.float64)
        self._raw = np.zeros(k)
        self._positions = np.zeros(k, np.int64)

    def _push(
        self,
        features: list[Any],
        cls: np.ndarray,
        position: int,
        raw_score: float = 0.0,
    ) -> None:
        if self._features is None:
            self._allocate(features, cls)
        slot = self._next
        for expert, values in enumerate(features):
            self._features[expert, slot] = self.xp.asarray(values, dtype=self._dtype)
        self._cls[slot] = np.asarray(cls, np.float64).reshape(-1)
        self._raw[slot] = raw_score
        self._positions[slot] = position
        self._next = (slot + 1) % self.bank
        self._fill = min(self._fill + 1, self.bank)

    def _msm(self, query: Any, expert: int) -> np.ndarray:
        bank = self._features[expert, : self._fill]
        cfg = self.config
        if query is None:
            return mutual_scores(
                bank,
                cfg.topmin_max,
                memory_budget_mb=cfg.memory_budget_mb,
                device=cfg.device,
                align_window=cfg.align_window,
            )
        return mutual_scores(
            query[None],
            cfg.topmin_max,
            bank=bank,
            memory_budget_mb=cfg.memory_budget_mb,
            device=cfg.device,
            align_window=cfg.align_window,
        )[0]

    def _refine(
        self, raw: np.ndarray, cls: np.ndarray, positions: np.ndarray, rows: np.ndarray | None
    ) -> np.ndarray:
        """STAS for ``rows`` (None: all) over these images (RsCIN-like with --no-stas)."""
        cfg = self.config
        if cfg.use_stas:
            window, gamma, alpha, k_list = cfg.window, cfg.gamma, cfg.alpha, cfg.stas_k
            semantic = cfg.stas_semantic
        else:
            window, gamma, alpha, k_list, semantic = 0, 1.0, 1.0, cfg.rscin_k, "clip"
        affinity = semantic_temporal_affinity(
            cls, positions, rows, window=window, gamma=gamma, alpha=alpha, semantic=semantic
        )
        return propagate(raw, affinity, k_list, own=raw if rows is None else raw[rows])

    def _beta(self) -> float:
        return self.config.beta if self.config.use_stas else 0.0

    def _check_alignment(self) -> None:
        """The alignment check on the warm-up set: deepest tap, smallest r (as for a set)."""
        cfg = self.config
        if cfg.align_window is None:
            return
        r_index = cfg.r_list.index(min(cfg.r_list))
        expert = self._features.shape[0] - len(cfg.r_list) + r_index
        features = self._features[expert, : self._fill].astype(self.xp.float32)
        self.alignment = alignment_check(features, cfg.align_window, seed=cfg.seed)
        self._notes.append(alignment_report(self.alignment))

    def _score_held(self) -> list[StreamResult]:
        n = self._fill
        self._check_alignment()
        fused = np.mean([self._msm(None, e) for e in range(self._features.shape[0])], axis=0)
        fused = fused.astype(np.float32)
        raw = raw_image_scores(fused, self.config.image_score, self.image_size)
        self._raw[:n] = raw
        refined = self._refine(raw, self._cls[:n], self._positions[:n], None)
        # The held images sit in slots 0..n-1 in arrival order.
        scores = ema(refined, self._beta())
        self._ema = float(scores[-1])
        self.map_range = (float(fused.min()), float(fused.max()))
        return [
            StreamResult(
                int(self._positions[i]), float(scores[i]), float(raw[i]), fused[i], "warm-up"
            )
            for i in range(n)
        ]

    def _score_one(self, features: list[Any], cls: np.ndarray, position: int) -> StreamResult:
        experts = [self._msm(values, e) for e, values in enumerate(features)]
        fused = np.mean(experts, axis=0).astype(np.float32)
        raw = float(raw_image_scores(fused[None], self.config.image_score, self.image_size)[0])
        n = self._fill
        # STAS row of the new image over the bank and itself; the ring is updated afterwards.
        refined = self._refine(
            np.append(self._raw[:n], raw),
            np.vstack([self._cls[:n], np.asarray(cls, np.float64).reshape(1, -1)]),
            np.append(self._positions[:n], position),
            np.array([n]),
        )[0]
        score = float(ema(np.array([refined]), self._beta(), previous=self._ema)[0])
        self._ema = score
        return StreamResult(position, score, raw, fused, "stream")
