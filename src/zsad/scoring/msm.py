"""MSM: mutual scoring of patches by their nearest neighbours in the other images.

Design. Features are unit vectors, so ``d^2 = 2 - 2 cos`` and all the work is matrix products.
A table ``best[j, i, p]`` (float32, K x N x P, K = N or the bank size) holds the largest cosine
between patch p of image i and any patch of image j. It is filled reference image by reference
image: for image b, the patches of images 0..b-1 are multiplied with those of b in row tiles
``(rows, C) @ (C, P)``. The row-wise max of a tile gives ``best[b, a, :]`` and its column-wise
max per image gives ``best[a, b, :]``, because cos(a, b) is the transpose of cos(b, a): every
unordered pair is multiplied once, half the FLOPs of scoring each image against all others, and
the P x (N-1) x P distance tensor is never formed. Finally each patch keeps its k largest
cosines over the other images (np.partition), which are exactly its k smallest distances.

Memory: the table takes N * P * K * 4 bytes (219 MB at N = K = 200, P = 1369); on top of it,
``memory_budget_mb`` bounds the cosine tile and the top-k temporaries.

With ``align_window`` the table is filled by zsad.scoring.aligned instead (fixtured parts: each
patch only searches a window around its own position); the top-k step is the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from zsad.arrays import array_module, to_numpy
from zsad.formats.memory import MSM_BUDGET_MB
from zsad.scoring.aligned import aligned_nearest_cosines, grid_side


def _check_features(array: ArrayLike, name: str) -> Any:
    # A CuPy array (a bank kept on the GPU) is checked where it lives, never copied to the host.
    if not hasattr(array, "__cuda_array_interface__"):
        array = np.asarray(array)
    if array.ndim != 3 or min(array.shape) < 1:
        raise ValueError(f"{name} must be a non-empty (N, P, C) array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must be a floating-point array, got {array.dtype}")
    return array


def _row_tiles(
    n_images: int, n_patches: int, tile_rows: int
) -> Iterator[tuple[int, int, int, int]]:
    """Yield (a0, a1, lo, hi): either whole images a0..a1-1 or rows lo..hi-1 of image a0 only."""
    if tile_rows >= n_patches:
        step = tile_rows // n_patches
        for a0 in range(0, n_images, step):
            yield a0, min(a0 + step, n_images), 0, n_patches
    else:
        for a in range(n_images):
            for lo in range(0, n_patches, tile_rows):
                yield a, a + 1, lo, min(lo + tile_rows, n_patches)


def _nearest_cosines(xp: ModuleType, query: Any, ref: Any, symmetric: bool, budget: int) -> Any:
    """best[j, i, p] = max cosine of query patch (i, p) over the patches of reference image j."""
    n, n_patches, c = query.shape
    n_ref, ref_patches, _ = ref.shape
    # Reference-major, so both the row-max and the column-max results land in contiguous runs.
    best = xp.full((n_ref, n, n_patches), -np.inf, dtype=xp.float32)
    tile_rows = max(1, budget // (ref_patches * query.dtype.itemsize))
    tile = xp.empty(min(tile_rows, n * n_patches) * ref_patches, dtype=query.dtype)
    for b in range(n_ref):
        ref_t = ref[b].T
        # Symmetric mode: pairs (a, b) with a < b only; the column max covers (b, a).
        row_images = b if symmetric else n
        for a0, a1, lo, hi in _row_tiles(row_images, n_patches, tile_rows):
            m, rows = a1 - a0, hi - lo
            cos = tile[: m * rows * ref_patches].reshape(m * rows, ref_patches)
            xp.matmul(query[a0:a1, lo:hi].reshape(m * rows, c), ref_t, out=cos)
            cos = cos.reshape(m, rows, ref_patches)
            # On the CPU, reducing image by image keeps each block cache-resident between its two
            # passes; on the GPU one launch per tile is cheaper.
            step = 1 if xp is np else m
            for g0 in range(0, m, step):
                block = cos[g0 : g0 + step]
                best[b, a0 + g0 : a0 + g0 + step, lo:hi] = block.max(axis=2)
                if symmetric:
                    # A running max: a tile may hold only some rows of image a.
                    seen = best[a0 + g0 : a0 + g0 + step, b]
                    xp.maximum(seen, block.max(axis=1), out=seen)
    return best


def _mean_smallest_distances(xp: ModuleType, best: Any, k: int, budget: int) -> Any:
    n_ref, n, n_patches = best.shape
    scores = xp.empty((n, n_patches), dtype=xp.float32)
    step = max(1, budget // (2 * n_patches * n_ref * 4))
    for i0 in range(0, n, step):
        block = xp.ascontiguousarray(best[:, i0 : i0 + step].transpose(1, 2, 0))
        # The k largest cosines are the k smallest distances; the -inf self entries never qualify.
        top = xp.partition(block, n_ref - k, axis=2)[:, :, n_ref - k :]
        dist = xp.sqrt(xp.maximum(2.0 - 2.0 * top, 0.0))
        scores[i0 : i0 + step] = dist.mean(axis=2)
    return scores


def working_dtype(xp: ModuleType, half: bool = True) -> Any:
    """The dtype MSM multiplies in: float16 on the GPU when ``half``, else float32."""
    return xp.float16 if (xp is not np and half) else xp.float32


def mutual_scores(
    features: ArrayLike,
    topmin_max: float = 0.3,
    *,
    bank: ArrayLike | None = None,
    memory_budget_mb: float = MSM_BUDGET_MB,
    device: str = "auto",
    half: bool = True,
    align_window: int | None = None,
) -> np.ndarray:
    """Score each patch by its mean distance to its nearest patches in the k closest other images.

    ``features`` (N, P, C) must hold unit vectors (the output of ``lnamd``). Each patch takes
    its nearest-neighbour distance in every other image and averages the smallest
    ``k = max(1, int((N - 1) * topmin_max))`` of them. With ``bank`` (K, P', C), every query
    image is scored against the K bank images instead, ``k = max(1, int(K * topmin_max))``,
    with no self-exclusion: a query image that also sits in the bank scores ~0 against itself.
    ``memory_budget_mb`` bounds the temporary buffers (not the N x P x K float32 table).
    A contiguous ``bank`` of the working dtype already on the device is used without a copy.
    ``device``: "auto" (CuPy if it finds a CUDA device, else NumPy), "cpu" or "gpu". On the GPU,
    ``half`` casts features to float16: cuBLAS accumulates in float32 but the cosine tile is
    stored in float16 (spacing 2^-11 below 1, so d^2 is good to ~5e-4 absolute); ``half=False``
    keeps float32 throughout. ``align_window`` w (fixtured parts): a patch's nearest neighbour
    in another image is searched only among the patches within w grid cells of its own position
    (a square grid; w >= side - 1 is global MSM); None searches the whole image.
    Returns (N, P) float32.
    """
    query = _check_features(features, "features")
    if not 0.0 < topmin_max <= 1.0:
        raise ValueError(f"topmin_max must be in (0, 1], got {topmin_max}")
    if memory_budget_mb <= 0:
        raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
    if align_window is not None and align_window < 0:
        raise ValueError(f"align_window must be >= 0 grid cells, got {align_window}")
    n, _, c = query.shape
    if bank is None:
        if n < 2:
            raise ValueError(
                f"mutual_scores needs at least 2 images to score them against each other, got {n}; "
                "pass bank= to score a single image against reference images"
            )
        k = max(1, int((n - 1) * topmin_max))
    else:
        bank = _check_features(bank, "bank")
        if bank.shape[2] != c:
            raise ValueError(f"bank has {bank.shape[2]} channels, features have {c}")
        k = max(1, int(bank.shape[0] * topmin_max))

    xp = array_module(device)
    dtype = working_dtype(xp, half)
    budget = int(memory_budget_mb * 2**20)
    q = xp.ascontiguousarray(xp.asarray(query), dtype=dtype)
    ref = q if bank is None else xp.ascontiguousarray(xp.asarray(bank), dtype=dtype)
    if align_window is None or align_window >= grid_side(q.shape[1]) - 1:
        # A window over the whole grid is global MSM, which the global kernel computes cheaper.
        best = _nearest_cosines(xp, q, ref, symmetric=bank is None, budget=budget)
    else:
        if ref.shape[1] != q.shape[1]:
            raise ValueError(
                f"aligned scoring needs the bank's patch grid ({ref.shape[1]} patches) to match "
                f"the features' ({q.shape[1]})"
            )
        cos = aligned_nearest_cosines(xp, q, ref, align_window, bank is None, budget)
        # (P, N, K) -> the (K, N, P) view the top-k step reads.
        best = cos.transpose(2, 1, 0)
    return to_numpy(_mean_smallest_distances(xp, best, k, budget))
