"""Aligned MSM: each patch looks for its nearest neighbours only within +-w grid cells of its own
position in the other images (fixtured parts), and a check of whether the parts are aligned.

Design. The work is organised as GEMMs over spatial tiles with halos. A tile is a run of T
patches of one grid row in the images of side A; its halo is the same columns widened by w on
each side, over the rows the window reaches, in the images of side B. A step copies the rows of
side B its tiles' halos reach once, position-major (row, column, image, C), so that every halo
row of every tile is a (U * N_B, C) matrix in place; one stacked ``matmul`` call then multiplies
all the step's tiles with all their halo rows (NumPy loops over the BLAS calls in C: no Python
per tile). The product holds every cosine the tiles need plus the halos' corners outside the
window ((T + 2w) / (2w + 1) as many per row as needed); those and the columns off the grid are
set to -inf by an additive mask, and two max-reductions of the product give

- the row reduction: each A patch's best cosine per B image within its window;
- the scatter reduction: each B patch's best cosine per A image, a running max, since a B
  patch lies in the halos of several tiles.

Set scoring (A = B = the set) multiplies the halo rows below the tile's and its own row from the
tile on: a pair of patches whose offset points down (or right) is found in the tile of the upper
(left) one, and the two reductions give both directions from that one product, so every
unordered pair within the window is multiplied once (pairs inside one tile twice: max is
idempotent). The tiles are part of the copied rows. Bank scoring takes A = the bank, B = the
queries and the full halo rows y-w..y+w, and uses the scatter reduction only; a tile of one
column of the bank is a view of it (no copy), and with a few queries side B is copied per column
block (bands) so that a tile's whole halo is one matrix instead of short ones per row.

Shapes. OpenBLAS's AVX-512 kernels multiply a GEMM of at most 100^3 multiply-adds without
packing its operands, 1.5-2x faster than packed at these sizes; there a set's tile is one patch
(T = 1: no corners) and a halo row is cut into groups of columns small enough for that. Other
BLAS builds get tiles of about _CPU_TILE_COLUMNS GEMM columns. On the GPU a tile is a whole grid
row, one step per row (few large launches). The grid rows are cut into chunks, two per thread
(as many threads as BLAS would use, each with one BLAS thread: small GEMMs split across BLAS
threads spend their time synchronising); each chunk fills a table part of its own, merged at the
end where neighbouring parts overlap. The reductions run along contiguous rows of the product
(a max over a middle axis by halves, the mask repeated over the images): numpy's reductions
whose inner loop is only K_A long take several times longer. ``memory_budget_mb`` bounds the
copied rows, products and their reductions; the (P, N_B, K_A) float32 table is extra, as in
global MSM (here up to about twice: the parts and the padded table).

Cost: (N-1) * P * (2w+1)^2 * C multiply-adds instead of (N-1) * P^2 * C, times the corner
overhead. Speed at ViT-L shapes (P = 1369, C = 1024) on 2 cores: see docs/benchmarks.md (per
OpenBLAS kernel family).
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

# Where BLAS packs every GEMM, CPU tiles hold about this many GEMM columns (T * K_A): enough
# for BLAS to run near its peak while the halos' corners stay a small overhead at the usual
# windows. Against a bank twice as many: there a few queries are copied per column block, T + 2w
# columns for every T.
_CPU_TILE_COLUMNS = 20
# OpenBLAS's AVX-512 kernels (SkylakeX and later) multiply a GEMM of at most 100^3
# multiply-adds without packing its operands: 1.5-2x faster at a tile's shapes.
_SMALL_GEMM = 100**3
_SMALL_GEMM_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})
# Row chunks per worker: taller chunks copy fewer halo rows twice, more chunks keep the
# workers busy to the end.
_CHUNKS_PER_WORKER = 2
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


def _row_chunks(side: int, workers: int) -> list[range]:
    """The grid rows in nearly equal chunks, _CHUNKS_PER_WORKER per worker where the grid is
    tall enough: a worker that finishes early takes the next one."""
    count = max(1, min(side, workers * _CHUNKS_PER_WORKER if workers > 1 else 1))
    bounds = np.linspace(0, side, count + 1).round().astype(int)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


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


def _small_gemm_limit() -> int:
    """The multiply-adds up to which NumPy's BLAS runs a GEMM without packing its operands
    (OpenBLAS's AVX-512 kernels), else 0."""
    controller = _blas_controller()
    for lib in controller.select(user_api="blas").lib_controllers if controller else []:
        core = str(getattr(lib, "architecture", "")).lower()
        if lib.internal_api == "openblas" and core in _SMALL_GEMM_CORES:
            return _SMALL_GEMM
    return 0


@dataclass(frozen=True)
class _Plan:
    """One aligned search: tiles of T patches of a grid row in side A (K_A images), each
    multiplied with its halo in side B (N_B images); a step takes ``columns`` tiles of ``rows``
    grid rows."""

    a: Any  # (K_A, side, side, C)
    b: Any  # (N_B, side, side, C)
    window: int
    symmetric: bool
    tile: int
    banded: bool
    rows: int
    columns: int
    group: int = 0  # halo columns per GEMM at most (0: a halo row's all)

    @property
    def side(self) -> int:
        return int(self.a.shape[1])

    @property
    def up(self) -> int:
        """Halo rows above a tile's row: none in a set (pairs pointing up are met from above)."""
        return 0 if self.symmetric else self.window

    @property
    def tiles(self) -> int:
        """Tiles per grid row."""
        return -(-self.side // self.tile)

    @property
    def span(self) -> int:
        """U: the columns of a tile's halo."""
        return self.tile + 2 * self.window

    def split(self, columns: int) -> tuple[int, int]:
        """``columns`` halo columns as (GEMMs, columns each): nearly equal groups of at most
        ``group``, the last padded with masked columns."""
        if not self.group or self.banded:
            return 1, columns
        count = -(-columns // self.group)
        return count, -(-columns // count)

    def cover(self, columns: int) -> int:
        """``columns`` padded to whole groups."""
        count, size = self.split(columns)
        return count * size

    @property
    def width(self) -> int:
        """The columns of side B a step copies: its tiles' halos, padded to whole groups."""
        own = self.window + self.cover(self.tile + self.window) if self.symmetric else 0
        return (self.columns - 1) * self.tile + max(self.cover(self.span), own)

    @property
    def halo_rows(self) -> int:
        """The halo rows multiplied whole: in a set those below the tile's (its own row is
        multiplied from the tile on)."""
        return self.window if self.symmetric else 2 * self.window + 1

    def held(self) -> int:
        """The bytes a worker holds for a step: side B's padded rows (and their bands), side
        A's tile rows against a bank, the products and their reductions' temporaries."""
        (k_a, _, _, c), n_b = self.a.shape, self.b.shape[0]
        t, w, g = self.tile, self.window, self.columns
        rows_b = self.rows + self.up + w
        copy = rows_b * (self.width + (g * self.span if self.banded and g > 1 else 0)) * n_b
        if not self.symmetric and t > 1:
            copy += self.rows * g * t * k_a
        own = self.cover(t + w) if self.symmetric else 0
        products = self.rows * g * (self.halo_rows * self.cover(self.span) + own) * n_b * t * k_a
        return (copy * c + 2 * products) * self.a.dtype.itemsize


def _plan(xp: ModuleType, a: Any, b: Any, window: int, symmetric: bool, share: int) -> _Plan:
    """Tile width, rows and tiles per step for side A (K_A, side, side, C) against side B within
    ``share`` bytes: whole grid rows on the GPU; on the CPU, where BLAS skips packing small
    GEMMs, tiles of one patch against groups of halo columns small enough for that (no
    corners), else tiles of about _CPU_TILE_COLUMNS GEMM columns (twice that against a bank)."""
    k_a, side, _, c = a.shape
    n_b = b.shape[0]
    on_cpu = xp is np
    group = _small_gemm_limit() // (n_b * k_a * c) if on_cpu else 0
    if not on_cpu:
        tile = side
    elif group:
        tile = 1
    else:
        columns = _CPU_TILE_COLUMNS if symmetric else 2 * _CPU_TILE_COLUMNS
        tile = min(side, max(1, -(-columns // k_a)))

    def plan(tile: int, rows: int, columns: int) -> _Plan:
        # Side B per column block, so that a tile's whole halo is one matrix: on the GPU (one
        # tile per step: no copy), and where one halo row alone is a short GEMM (a few query
        # images against a bank) that BLAS would pack.
        short = n_b * (tile + 2 * window) < 2 * _CPU_TILE_COLUMNS
        banded = not on_cpu or (not symmetric and not group and short)
        return _Plan(a, b, window, symmetric, tile, banded, rows, columns, group)

    chosen = plan(tile, 1, -(-side // tile) if on_cpu else 1)
    # Over the budget: fewer tiles per step, then narrower tiles.
    while chosen.held() > share and (chosen.columns > 1 or chosen.tile > 1):
        if chosen.columns > 1:
            chosen = plan(chosen.tile, 1, -(-chosen.columns // 2))
        else:
            chosen = plan(max(1, chosen.tile // 2), 1, 1)
    while on_cpu and chosen.rows < side:
        taller = plan(chosen.tile, chosen.rows + 1, chosen.columns)
        if taller.held() > share:
            break
        chosen = taller
    return chosen


def _masks(xp: ModuleType, plan: _Plan) -> tuple[Any, Any]:
    """Additive masks, 0 where a tile patch and a halo patch are within the window and both on
    the grid, else -inf: (1, tiles, 1, U, 1, T * K_A) for the whole halo rows, the same with
    T + w columns for a set's own row (each padded to whole groups). Repeated over the K_A
    images so that the add runs along contiguous rows."""
    side, t, w, k_a = plan.side, plan.tile, plan.window, plan.a.shape[0]
    start = np.arange(plan.tiles) * t
    tile_col = start[:, None, None] + np.arange(t)[None, None, :]

    def mask(first: int, columns: int) -> Any:
        col = (start + first)[:, None, None] + np.arange(columns)[None, :, None]
        ok = (abs(col - tile_col) <= w) & (col >= 0) & (col < side) & (tile_col < side)
        values = np.repeat(np.where(ok, 0.0, -np.inf)[:, :, None, :, None], k_a, axis=4)
        shape = (1, plan.tiles, 1, columns, 1, t * k_a)
        return xp.asarray(values.reshape(shape), dtype=plan.a.dtype)

    return mask(-w, plan.cover(plan.span)), mask(0, plan.cover(t + w))


class _Buffers:
    """One worker's buffers for its steps: side B's rows position-major (columns off the grid
    finite, masked), its bands, side A's tile rows against a bank, the products."""

    def __init__(self, xp: ModuleType, plan: _Plan) -> None:
        (k_a, _, _, c), n_b, dtype = plan.a.shape, plan.b.shape[0], plan.a.dtype
        t, w, g = plan.tile, plan.window, plan.columns
        rows_b = plan.rows + plan.up + w
        self.plain = xp.zeros((rows_b, plan.width, n_b, c), dtype=dtype)
        copy_band = plan.banded and g > 1
        self.band = xp.empty((g, rows_b, plan.span, n_b, c), dtype=dtype) if copy_band else None
        copy_tiles = not plan.symmetric and t > 1  # a one-column tile of a bank is a view
        self.tiles = xp.zeros((plan.rows, g * t, k_a, c), dtype) if copy_tiles else None
        per_row = g * n_b * t * k_a
        whole = plan.rows * plan.halo_rows * plan.cover(plan.span) * per_row
        self.whole = xp.empty(whole, dtype=dtype)
        own = plan.rows * plan.cover(t + w) * per_row
        self.own = xp.empty(own, dtype=dtype) if plan.symmetric else None


def _fill(xp: ModuleType, plan: _Plan, rows: range, masks: tuple[Any, Any], width: int) -> Any:
    """The running maxima of the tiles of grid rows ``rows``: padded rows ``rows.start`` to
    ``rows.stop + plan.up + plan.window - 1`` of the table, in a part of their own."""
    (k_a, *_), n_b = plan.a.shape, plan.b.shape[0]
    part = xp.full((len(rows) + plan.up + plan.window, width, n_b, k_a), -np.inf, xp.float32)
    buffers = _Buffers(xp, plan)
    for y0 in range(rows.start, rows.stop, plan.rows):
        step_rows = range(y0, min(rows.stop, y0 + plan.rows))
        for first in range(0, plan.tiles, plan.columns):
            tiles = range(first, min(plan.tiles, first + plan.columns))
            _step(xp, plan, (rows.start, step_rows), tiles, buffers, masks, part)
    return part


def _step(
    xp: ModuleType,
    plan: _Plan,
    at: tuple[int, range],
    tiles: range,
    buf: _Buffers,
    masks: tuple[Any, Any],
    part: Any,
) -> None:
    """Tiles ``tiles`` of grid rows ``rows`` (``at`` = (the part's first grid row, rows)): one
    copy of side B's rows their halos reach, one stacked GEMM call for the whole halo rows (and
    one for a set's own row), the reductions into ``part``."""
    base, rows = at
    as_strided = xp.lib.stride_tricks.as_strided
    side, w, up, t, u = plan.side, plan.window, plan.up, plan.tile, plan.span
    (k_a, _, _, c), n_b = plan.a.shape, plan.b.shape[0]
    r, g, k = len(rows), len(tiles), t * k_a
    # Side B's rows g0..g1 and columns c0.. (grid coordinates) into the plain buffer.
    g0, g1, c0 = rows.start - up, rows.stop + w, tiles.start * t - w
    y_lo, y_hi = max(g0, 0), min(g1, side)
    x_lo, x_hi = max(c0, 0), min(c0 + g * t + 2 * w, side)
    plain = buf.plain[: g1 - g0]
    block = plan.b[:, y_lo:y_hi, x_lo:x_hi].transpose(1, 2, 0, 3)
    plain[y_lo - g0 : y_hi - g0, x_lo - c0 : x_hi - c0] = block
    sp = plain.strides
    if plan.symmetric:
        # The tiles are part of side B's rows.
        st, first = sp, (0, w)
        source = plain
    elif t == 1:
        # A tile of one patch of every bank image is a view of the bank: no copy.
        sa = plan.a.strides
        st, first = (sa[1], sa[2], sa[0], sa[3]), (rows.start, tiles.start)
        source = plan.a[0]
    else:
        source, first = buf.tiles[:r], (0, 0)
        x_hi = min(side, tiles.stop * t)
        block = plan.a[:, rows.start : rows.stop, c0 + w : x_hi].transpose(1, 2, 0, 3)
        source[:, : x_hi - c0 - w] = block
        st = source.strides
    # (r, g, 1, 1, C, T * K_A): the tiles' patches of all images, a view.
    shape, strides = (r, g, 1, 1, c, k), (st[0], t * st[1], 0, 0, st[3], st[2])
    tile = as_strided(source[first], shape, strides)
    height = plan.halo_rows
    below = 1 if plan.symmetric else 0  # the first whole halo row, relative to the tile's row
    whole = None
    if height:
        if plan.banded:
            # Side B per tile: a tile's whole halo is one (height * U * N_B, C) matrix.
            if buf.band is None:
                band = plain[None]
            else:
                band = buf.band[:g, : g1 - g0]
                strides = (t * sp[1], sp[0], sp[1], sp[2], sp[3])
                band[...] = as_strided(plain, (g, g1 - g0, u, n_b, c), strides)
            sb = band.strides
            shape = (r, g, 1, 1, height * u * n_b, c)
            halo = as_strided(band[0, below], shape, (sb[1], sb[0], 0, 0, sb[3], sb[4]))
        else:
            # (r, g, height, groups, columns * N_B, C): one GEMM per group of halo columns.
            count, size = plan.split(u)
            shape = (r, g, height, count, size * n_b, c)
            strides = (sp[0], t * sp[1], sp[0], size * sp[1], sp[2], sp[3])
            halo = as_strided(plain[below], shape, strides)
            u = count * size
        whole = buf.whole[: r * g * height * u * n_b * k].reshape(halo.shape[:-1] + (k,))
        xp.matmul(halo, tile, out=whole)
        whole = whole.reshape(r, g, height, u, n_b, k)
        whole += masks[0][:, tiles.start : tiles.stop]
        for j, y in enumerate(rows):
            for h in range(height):
                if not 0 <= y - up + below + h < side:
                    whole[j, :, h] = -np.inf
        _scatter(xp, plan, whole, rows.start - base + below, tiles.start * t, part)
    if plan.symmetric:
        count, size = plan.split(t + w)
        shape = (r, g, 1, count, size * n_b, c)
        strides = (sp[0], t * sp[1], 0, size * sp[1], sp[2], sp[3])
        own = buf.own[: r * g * count * size * n_b * k].reshape(shape[:-1] + (k,))
        xp.matmul(as_strided(plain[0, w:], shape, strides), tile, out=own)
        own = own.reshape(r, g, 1, count * size, n_b, k)
        own += masks[1][:, tiles.start : tiles.stop]
        _scatter(xp, plan, own, rows.start - base, tiles.start * t + w, part)
        # Each tile patch's best per other image over its half window: the row reduction.
        near = _max_over_middle(xp, own.reshape(r * g, count * size, n_b * k))
        if whole is not None:
            near = xp.maximum(near, _max_over_middle(xp, whole.reshape(r * g, -1, n_b * k)))
        x0 = w + tiles.start * t
        seen = part[rows.start - base : rows.stop - base, x0 : x0 + g * t].reshape(
            r, g, t, k_a, n_b
        )
        xp.maximum(seen, near.reshape(r, g, n_b, t, k_a).transpose(0, 1, 3, 4, 2), out=seen)


def _scatter(xp: ModuleType, plan: _Plan, cos: Any, row: int, col: int, best: Any) -> None:
    """Each halo patch's best per tile image into ``best``: the scatter reduction of products
    (r, tiles, height, U', N_B, T * K_A) whose first tile's halo row 0, column 0 of the step's
    first row sits at ``best[row, col]``."""
    r, g, height, span, n_b, _ = cos.shape
    t, k_a = plan.tile, plan.a.shape[0]
    cos = cos.reshape(r, g, height, span, n_b, t, k_a)
    far = cos[..., 0, :]
    if t > 1:
        far = far.copy()
        for i in range(1, t):
            xp.maximum(far, cos[..., i, :], out=far)
    # T columns of every tile's halo land on distinct columns of best: one call each.
    for h in range(height):
        for a in range(0, span, t):
            b = min(t, span - a)
            seen = best[row + h : row + h + r, col + a : col + a + g * t]
            seen = seen.reshape(r, g, t, n_b, k_a)[:, :, :b]
            xp.maximum(seen, far[:, :, h, a : a + b], out=seen)


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
    on_cpu = xp is np
    workers = _cpu_workers(side) if on_cpu else 1
    a_grid = a_side.reshape(k_a, side, side, c)
    b_grid = b_side.reshape(n_b, side, side, c)
    plan = _plan(xp, a_grid, b_grid, window, symmetric, max(1, budget // workers))
    # Padded coordinates: up + w rows above and w below the grid, w columns to its left, and
    # room on its right for the last tiles' halos (whole groups).
    width = (plan.tiles + 1) * plan.tile + plan.cover(plan.span) + plan.cover(plan.tile + window)
    masks = _masks(xp, plan)
    chunks = _row_chunks(side, workers)
    with _one_blas_thread(on_cpu):
        if len(chunks) == 1:
            best = _fill(xp, plan, range(side), masks, width)
        else:
            best = xp.full((side + plan.up + window, width, n_b, k_a), -np.inf, xp.float32)
            # One BLAS thread per worker: small GEMMs on several BLAS threads spend their time
            # synchronising. Each chunk fills a part of its own; neighbouring parts overlap by
            # the rows a tile's halo reaches below its chunk, merged here.
            from concurrent.futures import ThreadPoolExecutor, as_completed

            with ThreadPoolExecutor(workers) as pool:
                jobs = {pool.submit(_fill, xp, plan, rows, masks, width): rows for rows in chunks}
                for job in as_completed(jobs):
                    # Merged as they come, so that few parts are held at once.
                    start, part = jobs.pop(job).start, job.result()
                    seen = best[start : start + part.shape[0]]
                    xp.maximum(seen, part, out=seen)
                    del job, part
    best = xp.ascontiguousarray(best[plan.up : plan.up + side, window : window + side])
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
