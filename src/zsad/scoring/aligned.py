"""Aligned MSM: each patch looks for its nearest neighbours only within +-w grid cells of its own
position in the other images (fixtured parts), and a check of whether the parts are aligned.

Design. The work is organised as GEMMs over spatial tiles with halos. A tile is a run of T
patches of one grid row in the images of side A; its halo is the same columns widened by w on
each side, over the rows the window reaches, in the images of side B. Side B is copied once per
column block into a band (rows, U, N_B, C), so any row's halo is one contiguous matrix and the
tile costs one GEMM (R*U*N_B, C) @ (C, T*K_A). The tile is the narrow operand on the right: at
these shapes OpenBLAS multiplies about 1.4x faster this way than with the tile on the left,
where packing the wide transposed halo costs about as much as the product. (Bands as wide as
the grid, shared by every tile of a row, copy less but cost a GEMM per halo row, no faster in
all.) The product holds every cosine the tile needs plus the band's corners outside the window
((T + 2w) / (2w + 1) as many per row as needed); those are set to -inf by an additive mask, and
two max-reductions of the product give

- the row reduction: each A patch's best cosine per B image within its window;
- the scatter reduction: each B patch's best cosine per A image, a running max, since a B
  patch lies in the halos of several tiles.

Set scoring (A = B = the set) multiplies only the halo rows y..y+w: a pair of patches whose
offset points down (or sideways) is found in the tile of the upper one, and the two reductions
give both directions from that one product. The tile is then part of the band (no copy), and on
the CPU its own row is multiplied only from the tile's first column on: a pair in one row is met
from the tile of its left patch, so every unordered pair within the window is multiplied once
(those inside one tile's row twice: max is idempotent). Bank scoring takes A = the bank, B = the
queries and the full halo rows y-w..y+w, and uses the scatter reduction only.

Cost: (N-1) * P * (2w+1)^2 * C multiply-adds instead of (N-1) * P^2 * C, times the band's corner
overhead. On the GPU a tile is a whole grid row (few large launches). On the CPU T is chosen so
the GEMM stays a good BLAS shape while the overhead stays small, and chunks of rows run on as
many threads as BLAS would use, each with one BLAS thread (small GEMMs split across BLAS
threads spend their time synchronising); alternate chunks run in two phases, so that threads
never write the same rows of the shared table, with several chunks per thread and phase so that
none waits long for the others. The reductions run along contiguous rows of the product (a max
over a middle axis by halves, the mask repeated over the images): numpy's reductions whose
inner loop is only K_A long take several times longer. ``memory_budget_mb`` bounds the bands
and product buffers; the (P, N_B, K_A) float32 table is extra, as in global MSM.

Speed at ViT-L shapes (P = 1369, C = 1024) on 2 cores: aligned MSM at w = 3 takes 8-10x less
time than global MSM at N = 10, 12x less at N = 20, 18x against a bank of 32. The tiles' GEMMs
run at about 75% of the BLAS peak; what they multiply beyond the window (the corners, each image
against itself: 1.65x the useful work of a set of 10) and the copies and reductions hold the
useful work to about a quarter of a large matmul's rate in a set of 10 and half against a bank
of 32 (docs/benchmarks.md, per OpenBLAS kernel family).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from zsad.arrays import to_numpy

# CPU tiles hold about this many GEMM rows (T * K_A): enough for BLAS to run near its peak
# while the band's corners stay a small overhead at the usual windows.
_CPU_TILE_ROWS = 40
# Row chunks per worker and phase at most (see _row_chunks).
_CHUNKS_PER_PHASE = 4
# The check compares this many image pairs and this many patches of each pair.
_CHECK_PAIRS = 8
_CHECK_PATCHES = 256
# Below this share of nearest-neighbour matches kept by the window, or above this rise of an
# image's largest nearest distance, a warning says the parts do not look aligned enough.
ALIGNED_ENOUGH = 0.85
PEAK_INFLATION_LIMIT = 1.35
# A match inside the window at most this much farther than the global one counts as inside.
_TOLERANCE = 1.25


def grid_side(n_patches: int) -> int:
    """The side of the square patch grid that ``n_patches`` patches form."""
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise ValueError(f"aligned scoring needs a square patch grid, got {n_patches} patches")
    return side


def _max_over_middle(xp: ModuleType, x: Any) -> Any:
    """(A, R, K) -> (A, K), the maximum over R by halves: each step runs along contiguous
    (R/2, K) rows, several times faster than a reduction whose inner loop is K long."""
    while x.shape[1] > 1:
        half = x.shape[1] // 2
        halved = xp.maximum(x[:, :half], x[:, half : 2 * half])
        if x.shape[1] % 2:
            xp.maximum(halved[:, :1], x[:, 2 * half :], out=halved[:, :1])
        x = halved
    return x[:, 0]


@dataclass(frozen=True)
class _Tiling:
    """The shapes of one aligned search: sides A (tiles) and B (bands) on a square grid."""

    a_grid: Any  # (K_A, side, side, C)
    b_grid: Any  # (N_B, side, side, C)
    window: int
    up: int  # halo rows above a tile's row: 0 in a symmetric set, else the window
    symmetric: bool
    tile: int  # columns per tile
    rows_per_band: int


def _window_mask(xp: ModuleType, x0: int, plan: _Tiling, k_a: int) -> Any:
    """(U, 1, T, K_A) additive mask of the tile at column x0: 0 where its halo's column u is
    within the window of its column t, else -inf; repeated over the K_A images so that the add
    runs along contiguous rows."""
    side = plan.a_grid.shape[1]
    w = plan.window
    x1 = min(side, x0 + plan.tile)
    offset = np.arange(max(0, x0 - w), min(side, x1 + w))[:, None] - np.arange(x0, x1)[None, :]
    mask = np.where(np.abs(offset) <= w, 0.0, -np.inf)[:, None, :, None]
    return xp.asarray(np.repeat(mask, k_a, axis=3), dtype=plan.a_grid.dtype)


def _fill(xp: ModuleType, plan: _Tiling, rows: range, best: Any) -> None:
    """Run the tiles of grid rows ``rows`` into ``best`` (running maxima). They write rows
    ``rows.start - plan.up`` to ``rows.stop + plan.window - 1`` of it, no others."""
    k_a, side, _, _ = plan.a_grid.shape
    n_b, w, up = plan.b_grid.shape[0], plan.window, plan.up
    width = min(side, plan.tile + 2 * w)
    buffer = xp.empty(
        min(side, up + w + 1) * width * n_b * plan.tile * k_a, dtype=plan.a_grid.dtype
    )
    for x0 in range(0, side, plan.tile):
        c0, c1 = max(0, x0 - w), min(side, x0 + plan.tile + w)
        mask = _window_mask(xp, x0, plan, k_a)
        for y0 in range(rows.start, rows.stop, plan.rows_per_band):
            y1 = min(rows.stop, y0 + plan.rows_per_band)
            r0, r1 = max(0, y0 - up), min(side, y1 + w)
            # (rows, U, N_B, C): a halo of consecutive rows is one contiguous matrix.
            band = xp.ascontiguousarray(plan.b_grid[:, r0:r1, c0:c1].transpose(1, 2, 0, 3))
            for y in range(y0, y1):
                _tile(xp, plan, band, r0, (y, x0), buffer, mask, best)
    del buffer


def _tile(
    xp: ModuleType,
    plan: _Tiling,
    band: Any,
    r0: int,
    at: tuple[int, int],
    buffer: Any,
    mask: Any,
    best: Any,
) -> None:
    """One tile: the GEMM of its halo against it, then both reductions into ``best``."""
    k_a, side, _, c = plan.a_grid.shape
    n_b, w = plan.b_grid.shape[0], plan.window
    y, x0 = at
    x1 = min(side, x0 + plan.tile)
    h0, h1 = max(0, y - plan.up), min(side, y + w + 1)
    c0 = max(0, x0 - w)
    t, u, height = x1 - x0, band.shape[1], h1 - h0
    # The product is (halo, tile): BLAS runs these small products about 1.4x faster with the
    # narrow operand (the tile) on the right than with the wide one there.
    if plan.symmetric:
        a_tile = band[y - r0, x0 - c0 : x1 - c0]  # the tile is part of the band
    else:
        a_tile = xp.ascontiguousarray(plan.a_grid[:, y, x0:x1].transpose(1, 0, 2))
    halo = band[h0 - r0 : h1 - r0].reshape(height * u * n_b, c)
    cos = buffer[: height * u * n_b * t * k_a].reshape(height * u * n_b, t * k_a)
    skip = 0
    if plan.symmetric and xp is np:
        # In the tile's own row only the pairs to its right are needed: those to the left were
        # met from the tile on the left.
        skip = (x0 - c0) * n_b
        cos[:skip] = -np.inf
    xp.matmul(halo[skip:], a_tile.reshape(t * k_a, c).T, out=cos[skip:])
    cos = cos.reshape(height, u, n_b, t, k_a)
    cos += mask
    if plan.symmetric:
        seen = best[y, x0:x1]
        near = cos.reshape(height * u, n_b * t * k_a).max(axis=0)
        xp.maximum(seen, near.reshape(n_b, t, k_a).transpose(1, 2, 0), out=seen)
    seen = best[h0:h1, c0 : c0 + u]
    far = _max_over_middle(xp, cos.reshape(height * u * n_b, t, k_a))
    xp.maximum(seen, far.reshape(height, u, n_b, k_a), out=seen)


def _row_chunks(side: int, reach: int, workers: int) -> list[range]:
    """The grid rows cut into chunks for two phases of alternate chunks: every chunk between
    two others at least ``reach`` rows tall (how far a tile writes beyond its row), so that
    the chunks of one phase write disjoint rows and the workers share one table without
    locks. Where the grid allows, nearly equal chunks, a multiple of the workers per phase,
    so that no worker waits long for the others at the end of a phase."""
    reach = max(reach, 1)
    # Up to _CHUNKS_PER_PHASE per worker: finer chunks copy their halo rows more often.
    count = 2 * workers * max(1, min(_CHUNKS_PER_PHASE, side // (2 * workers * reach)))
    if side // count >= reach:
        bounds = np.linspace(0, side, count + 1).round().astype(int)
        return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return [range(y, min(side, y + reach)) for y in range(0, side, reach)]


def _cpu_workers(n_rows: int) -> int:
    """Threads for the row chunks: as many as NumPy's BLAS would use (the CPUs, or what
    OPENBLAS_NUM_THREADS and the like allow), so aligned and global MSM use the same cores."""
    controller = _blas_controller()
    blas = controller.select(user_api="blas").lib_controllers if controller else []
    if blas:
        cpus = max(lib.num_threads for lib in blas)
    else:
        affinity = getattr(os, "sched_getaffinity", None)
        cpus = len(affinity(0)) if affinity else os.cpu_count() or 1
    return max(1, min(n_rows, cpus))


def aligned_nearest_cosines(
    xp: ModuleType, query: Any, ref: Any, window: int, symmetric: bool, budget: int
) -> Any:
    """best[p, i, j] = max cosine of query patch (i, p) over the patches of reference image j
    within ``window`` grid cells of p (Chebyshev distance); (P, N, K) float32, -inf for i == j
    in a symmetric set."""
    a_side, b_side = (query, query) if symmetric else (ref, query)
    k_a, n_patches, c = a_side.shape
    n_b = b_side.shape[0]
    side = grid_side(n_patches)
    up = 0 if symmetric else window
    on_cpu = xp is np
    tile = min(side, max(1, -(-_CPU_TILE_ROWS // k_a))) if on_cpu else side
    workers = _cpu_workers(side) if on_cpu else 1
    chunks = _row_chunks(side, up + window, workers)
    # Each worker holds a product buffer and a band, half its share each.
    half = budget // workers // 2
    itemsize = query.dtype.itemsize
    halo_rows = min(side, up + window + 1)

    def product_bytes(columns: int) -> int:
        return halo_rows * min(side, columns + 2 * window) * n_b * columns * k_a * itemsize

    while tile > 1 and product_bytes(tile) > half:
        tile = max(1, tile // 2)

    row_bytes = min(side, tile + 2 * window) * n_b * c * itemsize
    plan = _Tiling(
        a_side.reshape(k_a, side, side, c),
        b_side.reshape(n_b, side, side, c),
        window,
        up,
        symmetric,
        tile,
        max(1, half // row_bytes - up - window),
    )
    best = xp.full((side, side, n_b, k_a), -np.inf, dtype=xp.float32)
    with _one_blas_thread(on_cpu):
        if workers == 1 or len(chunks) < 2:
            _fill(xp, plan, range(side), best)
        else:
            # One BLAS thread per worker: small GEMMs on several BLAS threads spend their time
            # synchronising.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as pool:
                for phase in (chunks[0::2], chunks[1::2]):
                    for job in [pool.submit(_fill, xp, plan, rows, best) for rows in phase]:
                        job.result()
    best = best.reshape(n_patches, n_b, k_a)
    if symmetric:
        # An image is never its own reference; its self-pairs were multiplied along the way.
        best.reshape(n_patches, n_b * k_a)[:, :: n_b + 1] = -np.inf
    return best


@contextmanager
def _one_blas_thread(active: bool) -> Iterator[None]:
    """Limit NumPy's BLAS to one thread (threadpoolctl, installed with scikit-learn)."""
    controller = _blas_controller() if active else None
    if controller is None:  # without threadpoolctl BLAS keeps its threads: slower, same result
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS, found once: a fresh search takes milliseconds,
    too long to repeat for every map of every image on a stream."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def alignment_check(features: Any, window: int, *, seed: int = 0) -> dict[str, Any]:
    """How well ``window`` suits these images (mostly good parts), from a global search:

    - ``nn_inside_window``: the share of patches whose nearest neighbour in another image lies
      within ``window`` grid cells of their own position, counting one as inside when the
      window holds a match at most 25% farther (a uniform region matches about equally well
      everywhere, so its exact best match is noise);
    - ``peak_inflation``: how much the window raises the largest nearest-neighbour distance of
      an image (median over the pairs): MSM's image score, so > 1 means good parts would score
      higher, at their most distinctive places, than with a global search;
    - ``grid_side``: the side of the patch grid.

    ``features`` (N, P, C) unit vectors, N >= 2. Compares up to 8 image pairs on up to 256
    patches each: a few GFLOP at ViT-L shapes.
    """
    xp = np if not hasattr(features, "__cuda_array_interface__") else _cupy()
    n, n_patches, _ = features.shape
    side = grid_side(n_patches)
    rng = np.random.default_rng(seed)
    count = min(_CHECK_PATCHES, n_patches)
    ys, xs = np.divmod(np.arange(n_patches), side)
    kept, peaks = [], []
    for pair in range(min(_CHECK_PAIRS, n)):
        a, b = pair, (pair + 1) % n
        picked = np.sort(rng.choice(n_patches, count, replace=False))
        cos = to_numpy(features[a][xp.asarray(picked)] @ features[b].T).astype(np.float32)
        near = (np.abs(ys[picked, None] - ys[None, :]) <= window) & (
            np.abs(xs[picked, None] - xs[None, :]) <= window
        )
        nearest = np.sqrt(np.maximum(2.0 - 2.0 * cos.max(axis=1), 0.0))
        inside = np.sqrt(np.maximum(2.0 - 2.0 * np.where(near, cos, -1.0).max(axis=1), 0.0))
        kept.append(inside <= _TOLERANCE * nearest + 1e-6)
        peaks.append(float(inside.max()) / max(float(nearest.max()), 1e-12))
        if n == 2:
            break
    share = float(np.mean(np.concatenate(kept)))
    peak = float(np.median(peaks))
    return {
        "align_window": int(window),
        "grid_side": side,
        "nn_inside_window": round(share, 4),
        "peak_inflation": round(peak, 4),
        "pairs": len(kept),
        "aligned": share >= ALIGNED_ENOUGH and peak <= PEAK_INFLATION_LIMIT,
    }


def alignment_report(check: dict[str, Any]) -> str:
    """One line on ``alignment_check``'s result: a warning when the parts are not aligned enough,
    or when the window spans the whole grid."""
    window, share, side = check["align_window"], check["nn_inside_window"], check["grid_side"]
    if 2 * window + 1 >= side:
        # The centre patches search everything (all patches do from side - 1 on): the share
        # found above is then ~100% whatever the parts, and the tiles cost about what global
        # MSM does, or more on large grids.
        widest = (side - 2) // 2
        instead = f"use --align-window {widest} or less, or drop it" if widest >= 0 else "drop it"
        return (
            f"warning: alignment: --align-window {window} covers the whole {side} x {side} patch "
            f"grid (2W+1 = {2 * window + 1} >= {side}): nearly global MSM's search, without the "
            f"saving a window is for; {instead}"
        )
    found = (
        f"{100 * share:.0f}% of nearest-neighbour matches lie within --align-window {window}, "
        f"largest nearest distance x{check['peak_inflation']:.2f} of a global search"
    )
    if check["aligned"]:
        return f"alignment: {found}"
    return (
        f"warning: alignment: {found} (want >= {100 * ALIGNED_ENOUGH:.0f}% and <= "
        f"x{PEAK_INFLATION_LIMIT}): the parts do not look fixtured; widen the window or drop "
        "--align-window (global MSM)"
    )


def _cupy() -> ModuleType:
    import cupy

    return cupy
