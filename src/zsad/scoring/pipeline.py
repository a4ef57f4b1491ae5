"""Score a set of unlabeled images from their encoder outputs: MuSc, or STAPS (BGMPS + STAS)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zsad.arrays import array_module, to_numpy
from zsad.formats.methods import DEFAULT_METHOD, DEFAULT_R_LIST
from zsad.formats.methods import METHODS as REGISTRY
from zsad.scoring.aligned import alignment_check
from zsad.scoring.bgmps import bgmps
from zsad.scoring.lnamd import lnamd
from zsad.scoring.maps import IMAGE_SCORES, patch_grid, raw_image_scores
from zsad.scoring.msm import mutual_scores
from zsad.scoring.stas import SEMANTICS, pseudo_temporal_order, rscin, stas

# The methods this pipeline runs: those that score images against each other.
METHODS = tuple(name for name, m in REGISTRY.items() if not m.per_image)
# STAS's pseudo-temporal axis: a seeded shuffle of the set, or the input order when the images
# really arrived in that order (a production line).
ORDERS = ("shuffle", "input")


def _default(fn: Callable[..., Any], name: str) -> Any:
    """The default of a scoring function's argument, so each default is written once."""
    return inspect.signature(fn).parameters[name].default


@dataclass(frozen=True)
class SetScoringConfig:
    """Every choice of the training-free path; the STAPS-only ones are ignored by 'musc'."""

    method: str = DEFAULT_METHOD
    r_list: tuple[int, ...] = DEFAULT_R_LIST
    topmin_max: float = _default(mutual_scores, "topmin_max")
    memory_budget_mb: float = _default(mutual_scores, "memory_budget_mb")
    device: str = _default(mutual_scores, "device")
    align_window: int | None = _default(mutual_scores, "align_window")
    rscin_k: tuple[int, ...] = _default(rscin, "k_list")
    image_score: str = "upsampled"
    use_stas: bool = True
    window: int = _default(stas, "window")
    gamma: float = _default(stas, "gamma")
    alpha: float = _default(stas, "alpha")
    stas_k: tuple[int, ...] = _default(stas, "k_list")
    beta: float = _default(stas, "beta")
    stas_semantic: str = _default(stas, "semantic")
    use_bgmps: bool = True
    embed: str = _default(bgmps, "embed")
    cluster: str = _default(bgmps, "cluster")
    dim: int = _default(bgmps, "dim")
    n_components: int = _default(bgmps, "n_components")
    top_percent: float = _default(bgmps, "top_percent")
    order: str = "shuffle"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.stas_semantic not in SEMANTICS:
            raise ValueError(
                f"stas_semantic must be one of {SEMANTICS}, got {self.stas_semantic!r}"
            )
        if self.align_window is not None and self.align_window < 0:
            raise ValueError(f"align_window must be >= 0 grid cells, got {self.align_window}")
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {IMAGE_SCORES}, got {self.image_score!r}")


@dataclass
class SetScores:
    """Per-image scores (higher = more anomalous) and patch-grid maps, in input order."""

    image_scores: np.ndarray  # (N,)
    patch_maps: np.ndarray  # (N, g, g)
    raw_image_scores: np.ndarray  # (N,) by config.image_score, before RsCIN/STAS
    info: dict[str, Any] = field(default_factory=dict)


def _tap(xp: Any, taps: Any, index: int) -> Any:
    """Tap ``index`` of every image on the scoring device; no copy when the taps live there."""
    tap = taps[:, index]
    return to_numpy(tap) if xp is np else xp.asarray(tap)


def expert_maps(taps: Any, config: SetScoringConfig, *, progress: bool = False) -> np.ndarray:
    """One MSM map per (tap, r): taps (N, T, 1+P, C) -> (T * len(r_list), N, P) float32.

    ``taps`` may be NumPy or CuPy (an encoder whose outputs stay on the GPU).
    """
    n_images, n_taps, tokens, _ = taps.shape
    if n_images < 2:
        raise ValueError(f"mutual scoring needs at least 2 images, got {n_images}")
    experts = np.empty((n_taps * len(config.r_list), n_images, tokens - 1), np.float32)
    from tqdm.auto import tqdm  # imported on use: the CLI's --help should not load it

    xp = array_module(config.device)
    jobs = [(t, r) for t in range(n_taps) for r in config.r_list]
    tap_index, tap = None, None
    for e, (t, r) in enumerate(
        tqdm(jobs, desc="scoring", unit="map", disable=not progress, leave=False)
    ):
        if t != tap_index:
            # Each tap goes to the scoring device once; LNAMD and MSM then run there for every r.
            tap_index, tap = t, _tap(xp, taps, t)
        features = lnamd(tap, r)
        experts[e] = mutual_scores(
            features,
            config.topmin_max,
            memory_budget_mb=config.memory_budget_mb,
            device=config.device,
            align_window=config.align_window,
        )
    return experts


def check_alignment(taps: Any, config: SetScoringConfig) -> dict[str, Any]:
    """alignment_check on the deepest tap at the smallest r: do these parts suit the window?"""
    assert config.align_window is not None
    tap = _tap(array_module(config.device), taps, -1)
    return alignment_check(lnamd(tap, min(config.r_list)), config.align_window, seed=config.seed)


def score_set(
    taps: Any,
    cls: Any,
    config: SetScoringConfig,
    *,
    image_size: int,
    progress: bool = False,
) -> SetScores:
    """Score N images against each other: maps from MSM experts, image scores refined by CLS.

    ``image_size`` is the encoder's input size: the pixel map whose maximum is the raw score.
    ``taps`` and ``cls`` may be CuPy arrays: the taps are scored where they are, only the small
    CLS matrix comes to the host for STAS.
    """
    experts = expert_maps(taps, config, progress=progress)
    alignment = None if config.align_window is None else check_alignment(taps, config)
    return score_experts(experts, cls, config, image_size=image_size, alignment=alignment)


def score_experts(
    experts: np.ndarray,
    cls: Any,
    config: SetScoringConfig,
    *,
    image_size: int,
    alignment: dict[str, Any] | None = None,
) -> SetScores:
    """The rest of :func:`score_set` from its (E, N, P) expert maps: fuse them, then refine the
    image scores; studies that vary only these steps reuse one set of maps."""
    cls = to_numpy(cls)
    info: dict[str, Any] = {"method": config.method, "n_experts": int(experts.shape[0])}
    if alignment is not None:
        info["alignment"] = alignment
    if config.method == "staps" and config.use_bgmps:
        fused = bgmps(
            experts,
            embed=config.embed,
            cluster=config.cluster,
            dim=config.dim,
            n_components=config.n_components,
            top_percent=config.top_percent,
            seed=config.seed,
        )
        maps = fused.fused
        info["bgmps"] = {
            "selected": fused.selected.tolist(),
            "weights": [round(float(w), 6) for w in fused.weights],
        }
    else:
        maps = experts.mean(axis=0)
    raw = raw_image_scores(maps, config.image_score, image_size)
    if config.method == "staps" and config.use_stas:
        order = (
            pseudo_temporal_order(len(raw), config.seed)
            if config.order == "shuffle"
            else np.arange(len(raw))
        )
        scores = stas(
            raw,
            cls,
            order,
            window=config.window,
            gamma=config.gamma,
            alpha=config.alpha,
            k_list=config.stas_k,
            beta=config.beta,
            semantic=config.stas_semantic,
        )
        info["order"] = order.tolist()
    else:
        scores = rscin(raw, cls, config.rscin_k)
    return SetScores(np.asarray(scores, np.float64), patch_grid(maps), raw, info)
