"""BGMPS: cluster the expert anomaly maps, keep the cluster with the most anomaly evidence, fuse.

Each expert map (one per tap and aggregation degree) is flattened to N*P values and z-scored,
so that experts are compared by the shape of their maps, not by the scale of their distances
(deep taps give larger distances than shallow ones). The evidence of a cluster is measured on
the mean of its z-scored maps too: on raw maps the cluster of the deepest taps would win by its
units alone, whatever its maps show. The fused map is a weighted mean of the chosen raw maps;
the weights are cosines between z-scored experts and their cluster centroid (Pearson
correlations), so a negative weight, clipped to 0, means a contradicting expert.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class BGMPSResult:
    """Fused map and the selection that produced it."""

    fused: np.ndarray  # (N, P) float32
    selected: np.ndarray  # indices of the experts in the chosen cluster
    weights: np.ndarray  # their fusion weights, summing to 1
    labels: np.ndarray  # cluster label per expert, 0..n_clusters-1 in order of first appearance
    evidence: np.ndarray  # per cluster: mean of the top top_percent % of its mean z-scored map


def _zscore(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=1, keepdims=True)
    std = centred.std(axis=1, keepdims=True)
    # A constant expert has no shape: it becomes the zero vector (cosine 0 with everything).
    return np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)


def _embed(z: np.ndarray, method: str, dim: int) -> np.ndarray:
    if method == "dct":
        import scipy.fft  # imported on use: scipy and scikit-learn take seconds to load

        # Coefficient 0 (the mean) is 0 after z-scoring, so keep the d coefficients after it.
        return scipy.fft.dct(z, type=2, norm="ortho", axis=1)[:, 1 : dim + 1]
    if method == "svd":
        u, sing, _ = np.linalg.svd(z, full_matrices=False)
        d = min(dim, sing.size)
        # Project onto the top-d right singular vectors: z @ V_d = U_d * s_d.
        return u[:, :d] * sing[:d]
    raise ValueError(f"embed must be 'dct' or 'svd', got {method!r}")


def _cluster(z: np.ndarray, method: str, n_components: int, seed: int) -> np.ndarray:
    n_distinct = np.unique(z, axis=0).shape[0]
    n_components = min(n_components, n_distinct)
    if n_components == 1:
        return np.zeros(z.shape[0], dtype=np.int64)
    if method == "bgmm":
        from sklearn.mixture import BayesianGaussianMixture

        model = BayesianGaussianMixture(
            n_components=n_components,
            # Diagonal: ~12 points cannot support a full covariance in d dimensions.
            covariance_type="diag",
            # A small Dirichlet-process concentration lets unused components die out.
            weight_concentration_prior_type="dirichlet_process",
            weight_concentration_prior=1e-2,
            max_iter=1000,
            random_state=seed,
        )
        return model.fit(z).predict(z)
    if method == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=n_components, n_init=10, random_state=seed).fit_predict(z)
    raise ValueError(f"cluster must be 'bgmm' or 'kmeans', got {method!r}")


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0.. in order of first appearance, so the result is independent of ids."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse.ravel()]


def bgmps(
    expert_maps: ArrayLike,
    *,
    embed: str = "dct",
    cluster: str = "bgmm",
    dim: int = 16,
    n_components: int = 4,
    top_percent: float = 1.0,
    seed: int = 0,
) -> BGMPSResult:
    """Fuse expert maps (E, N, P) by Bayesian-mixture prototype selection (STAPS section 3.3).

    Defaults: dim=16 lowest-order coefficients (for the DCT, the coarse image-to-image profile
    of the flattened maps) tell map shapes apart while staying small next to N*P; for the SVD
    it is capped at E. n_components=4 is an upper bound (capped at E) that the
    Dirichlet-process prior prunes. top_percent=1.0 measures evidence on the top 1 % of all
    N*P values, the scale of real defects.
    """
    maps = np.asarray(expert_maps)
    if maps.ndim != 3 or min(maps.shape) < 1:
        raise ValueError(f"expert_maps must be a non-empty (E, N, P) array, got {maps.shape}")
    if dim < 1 or n_components < 1:
        raise ValueError("dim and n_components must be >= 1")
    if not 0.0 < top_percent <= 100.0:
        raise ValueError(f"top_percent must be in (0, 100], got {top_percent}")
    n_experts = maps.shape[0]
    flat = maps.reshape(n_experts, -1).astype(np.float64)
    z = _zscore(flat)

    if n_experts == 1 or np.allclose(z, z[:1]):
        labels = np.zeros(n_experts, dtype=np.int64)
    else:
        emb = _embed(z, embed, dim)
        labels = _relabel(_cluster(emb, cluster, min(n_components, n_experts), seed))

    n_top = max(1, math.ceil(flat.shape[1] * top_percent / 100.0))
    n_clusters = int(labels.max()) + 1
    evidence = np.empty(n_clusters)
    for c in range(n_clusters):
        mean_map = z[labels == c].mean(axis=0)
        evidence[c] = np.partition(mean_map, mean_map.size - n_top)[-n_top:].mean()

    chosen = int(np.argmax(evidence))
    selected = np.flatnonzero(labels == chosen)
    members = z[selected]
    centroid = members.mean(axis=0)
    norms = np.linalg.norm(members, axis=1) * np.linalg.norm(centroid)
    cosine = np.divide(members @ centroid, norms, out=np.zeros(selected.size), where=norms > 0)
    weights = np.maximum(cosine, 0.0)
    # All experts orthogonal to (or constant against) their centroid: no preference, fuse evenly.
    total = weights.sum()
    weights = weights / total if total > 0 else np.full(selected.size, 1.0 / selected.size)
    fused = np.tensordot(weights, flat[selected], axes=1).reshape(maps.shape[1:])
    return BGMPSResult(
        fused=fused.astype(np.float32),
        selected=selected,
        weights=weights,
        labels=labels,
        evidence=evidence,
    )
