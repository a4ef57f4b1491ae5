"""Image-score refinement: MuSc's RsCIN and STAPS's semantic-temporal scoring (STAS).

Both propagate min-max normalised image scores over an affinity graph: for each k in a list,
every image keeps its k strongest edges (itself included, since its self-affinity of 1 is the
row maximum), row-normalises them and takes the weighted mean of those images' scores; the
results are averaged over the k list.

Semantic affinity S of the L2-normalised CLS embeddings, two readings of STAPS (section 3.2),
whose cosine matrix "is further rescaled into the range [0, 1]":

- ``"rescale"`` (default, the paper's): min-max over the whole cosine matrix of the images
  scored together, S = (cos - min) / (max - min). For a set that is the N x N matrix of the set;
  for a rolling bank it is the matrix of the images in use (the filled bank slots and the new
  image), so a bank row is rescaled as the same images would be as a set. The diagonal (1) is
  the maximum, so every image stays its own strongest neighbour. Images of one product have
  cosines in a narrow band (say 0.6..1.0); rescaling keeps their semantic differences at the
  scale of the temporal term instead of a few hundredths.
- ``"clip"``: S = max(cos, 0), RsCIN's plain cosine whenever it is non-negative, so
  ``stas(alpha=1, window=0, beta=0, semantic="clip")`` *is* ``rscin``.

RsCIN itself always uses the clipped cosine (MuSc's weighting). Negative values never occur in
either reading, so no row's weights can sum to zero or change sign.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

# How STAS maps CLS cosines to a semantic affinity in [0, 1] (see the module docstring).
SEMANTICS = ("rescale", "clip")


def _minmax(scores: ArrayLike) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {s.shape}")
    span = s.max() - s.min()
    if not span > 0:
        # Constant scores carry no ranking; any constant maps to the same refined output.
        return np.zeros_like(s)
    return (s - s.min()) / span


def _unit_rows(cls: ArrayLike, n: int) -> np.ndarray:
    x = np.asarray(cls, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"cls must be (N, D) with N = {n} to match the scores, got {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def propagate(
    scores: np.ndarray, affinity: np.ndarray, k_list: Sequence[int], own: np.ndarray | None = None
) -> np.ndarray:
    """Average over k of each row's top-k affinity-weighted mean of ``scores``.

    ``affinity`` (R, M) holds R rows over the M scored images; ``own`` (R,) is each row's own
    score, kept by a row with no affinity at all (default: ``scores``, for R = M). Row
    normalisation makes this commute with any affine map of the scores, so min-max normalised
    scores and raw distances give the same ranking.
    """
    if len(k_list) == 0:
        raise ValueError("k_list must not be empty")
    own = scores if own is None else own
    n = affinity.shape[1]
    refined = np.zeros(affinity.shape[0])
    for k in k_list:
        if int(k) < 1:
            raise ValueError(f"every k in k_list must be >= 1, got {k}")
        k = min(int(k), n)
        idx = np.argpartition(-affinity, k - 1, axis=1)[:, :k]
        weights = np.take_along_axis(affinity, idx, axis=1)
        total = weights.sum(axis=1)
        # A row with no affinity at all (e.g. an all-zero CLS vector) keeps its own score.
        has_weight = total > 0
        mean = (weights * scores[idx]).sum(axis=1) / np.where(has_weight, total, 1.0)
        refined += np.where(has_weight, mean, own)
    return refined / len(k_list)


def semantic_temporal_affinity(
    cls: ArrayLike,
    positions: np.ndarray,
    rows: np.ndarray | None = None,
    *,
    window: int,
    gamma: float,
    alpha: float,
    semantic: str = "rescale",
) -> np.ndarray:
    """alpha * S + (1 - alpha) * T of the images ``rows`` (default: all) against all, (R, M).

    S: the CLS cosines min-max rescaled over all M x M pairs (``"rescale"``) or max(cos, 0)
    (``"clip"``); T = gamma^|t_i - t_j| within ``window`` steps of the time steps
    ``positions``, else 0.
    """
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    x = _unit_rows(cls, positions.size)
    rows = slice(None) if rows is None else rows
    similarity = semantic_affinity(x, semantic)[rows]
    lag = np.abs(positions[rows][:, None] - positions[None, :])
    temporal = np.where(lag <= window, gamma ** lag.astype(np.float64), 0.0)
    return alpha * similarity + (1.0 - alpha) * temporal


def semantic_affinity(unit_cls: np.ndarray, semantic: str = "rescale") -> np.ndarray:
    """(M, M) semantic affinity in [0, 1] of unit-length CLS rows: rescaled or clipped cosines."""
    if semantic not in SEMANTICS:
        raise ValueError(f"semantic must be one of {SEMANTICS}, got {semantic!r}")
    cosine = unit_cls @ unit_cls.T
    if semantic == "clip":
        return np.clip(cosine, 0.0, 1.0)
    low, high = cosine.min(), cosine.max()
    if not high - low > 0:
        # Identical embeddings: every pair is as similar as an image to itself.
        return np.ones_like(cosine)
    return (cosine - low) / (high - low)


def _positions(order: ArrayLike | None, n: int) -> np.ndarray:
    """Time step of each image: the inverse of ``order`` (order[t] = image shown at time t)."""
    if order is None:
        return np.arange(n)
    order = np.asarray(order)
    if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
        raise ValueError(f"order must be a permutation of range({n})")
    positions = np.empty(n, dtype=np.int64)
    positions[order] = np.arange(n)
    return positions


def pseudo_temporal_order(n: int, seed: int = 0) -> np.ndarray:
    """Seeded shuffle of range(n): order[t] is the index of the image placed at time t."""
    return np.random.default_rng(seed).permutation(n)


def rscin(scores: ArrayLike, cls: ArrayLike, k_list: Sequence[int] = (1, 2, 3)) -> np.ndarray:
    """MuSc's RsCIN: propagate min-max normalised scores over top-k CLS cosine neighbours."""
    s = _minmax(scores)
    x = _unit_rows(cls, s.size)
    return propagate(s, np.clip(x @ x.T, 0.0, 1.0), k_list)


def stas(
    scores: ArrayLike,
    cls: ArrayLike,
    order: ArrayLike | None = None,
    *,
    window: int = 2,
    gamma: float = 0.5,
    alpha: float = 0.8,
    k_list: Sequence[int] = (1, 2, 3),
    beta: float = 0.5,
    semantic: str = "rescale",
) -> np.ndarray:
    """STAPS STAS: propagate scores over alpha*S + (1-alpha)*T, then EMA along the order.

    ``order[t]`` is the index of the image at pseudo-time t (None: input order); T_ij =
    gamma^|t_i - t_j| within ``window`` steps, else 0. The result is in input order. Defaults
    (the paper gives none but beta): window=2 and gamma=0.5 give lag weights 1, 0.5, 0.25, a
    short neighbourhood in line with the paper's "lightweight locality regulariser";
    alpha=0.8 keeps semantics dominant, so the temporal bonus (0.1 at lag 1, 0.05 at lag 2)
    only reorders near-ties between similar images, consistent with the reported insensitivity
    to the shuffle seed; k_list=(1, 2, 3) is MuSc's MVTec list; beta=0.5 is the paper's best;
    ``semantic`` "rescale" is the paper's min-max over the set's cosine matrix, "clip" max(cos, 0).
    """
    s = _minmax(scores)
    n = s.size
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    positions = _positions(order, n)
    affinity = semantic_temporal_affinity(
        cls, positions, window=window, gamma=gamma, alpha=alpha, semantic=semantic
    )
    refined = propagate(s, affinity, k_list)

    time_order = np.argsort(positions)
    out = np.empty(n)
    out[time_order] = ema(refined[time_order], beta)
    return out


def ema(sequence: np.ndarray, beta: float, previous: float | None = None) -> np.ndarray:
    """Exponential moving average along a sequence: m_t = beta * m_(t-1) + (1 - beta) * x_t.

    ``previous`` carries the average over from earlier images; None starts at the first value.
    """
    out = np.empty(len(sequence))
    for t, value in enumerate(sequence):
        previous = value if previous is None else beta * previous + (1.0 - beta) * value
        out[t] = previous
    return out
