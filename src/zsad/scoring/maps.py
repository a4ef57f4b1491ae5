"""Patch-grid anomaly maps to pixel maps (bilinear, align_corners=True) and image scores from them.

MuSc upsamples each patch map to the encoder's input size with ``F.interpolate(...,
mode="bilinear", align_corners=True)`` and takes an image's raw score as the maximum of that
pixel map, before RsCIN. Output pixel ``i`` samples the grid at ``i * (n_in - 1) / (n_out - 1)``,
so apart from the corners the pixel lattice misses the grid points, and the upsampled maximum is
generally below the grid maximum.

The maximum needs no full-size map. Inside one grid cell the interpolant is
``a + b x + c y + d x y``: for a fixed row it is affine in x, so its largest value over the
cell's pixel columns sits at the cell's first or last column, and likewise for rows. The maximum
of the whole pixel map is therefore the maximum over the pixels whose row and column are each the
first or last one in their cell: at most 2 (h - 1) x 2 (w - 1) pixels (72 x 72 for 37 x 37
patches) instead of 518 x 518, computed with the same weights as the full map.
"""

from __future__ import annotations

import numpy as np

# An image's raw score: "upsampled" (MuSc: the maximum of the pixel map at the input size) or
# "grid" (the maximum of the patch grid, which thresholds stored without the setting assume).
IMAGE_SCORES = ("upsampled", "grid")


def _sample_positions(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output sample: its grid cell (left index) and its offset in the cell, float64."""
    if n_in == 1 or n_out == 1:
        return np.zeros(n_out, int), np.zeros(n_out)
    # torch's align_corners=True rule: one scale, times the output index.
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    return lo, pos - lo


def _interp_matrix(n_in: int, n_out: int, dtype: type = np.float32) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights whose first and last samples hit the corners."""
    lo, frac = _sample_positions(n_in, n_out)
    weights = np.zeros((n_out, n_in), dtype)
    rows = np.arange(n_out)
    weights[rows, lo] = 1.0 - frac
    if n_in > 1:
        weights[rows, lo + 1] += frac
    return weights


def _cell_extremes(n_in: int, n_out: int) -> np.ndarray:
    """Indices of the output samples that are the first or the last one inside their grid cell."""
    lo, _ = _sample_positions(n_in, n_out)
    first = np.flatnonzero(np.diff(lo, prepend=-1))
    last = np.flatnonzero(np.diff(lo, append=n_in))
    return np.union1d(first, last)


def upsample_maps(maps: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """(N, h, w) patch maps -> (N, height, width) float32, bilinear with align_corners=True."""
    width = height if width is None else width
    grid = np.asarray(maps, dtype=np.float32)
    rows = _interp_matrix(grid.shape[-2], height)
    cols = _interp_matrix(grid.shape[-1], width)
    # Separable interpolation as two small matrix products instead of a per-pixel gather.
    return np.matmul(np.matmul(rows, grid), cols.T)


def upsampled_max(maps: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """(N, h, w) patch maps -> (N,) float64 maximum of each map upsampled to (height, width)."""
    width = height if width is None else width
    grid = np.asarray(maps, dtype=np.float64)
    h, w = grid.shape[-2:]
    # MuSc's maps are float64 when they are upsampled; these few pixels are cheap in float64.
    rows = _interp_matrix(h, height, np.float64)[_cell_extremes(h, height)]
    cols = _interp_matrix(w, width, np.float64)[_cell_extremes(w, width)]
    return np.matmul(np.matmul(rows, grid), cols.T).max(axis=(-2, -1))


def raw_image_scores(maps: np.ndarray, rule: str, image_size: int) -> np.ndarray:
    """(N, P) flat patch maps -> (N,) float64 raw image scores by ``rule`` (see IMAGE_SCORES)."""
    if rule == "grid":
        return np.asarray(maps, np.float64).max(axis=-1)
    if rule == "upsampled":
        return upsampled_max(patch_grid(maps), image_size)
    raise ValueError(f"image score {rule!r}: choose from {', '.join(IMAGE_SCORES)}")


def patch_grid(maps: np.ndarray) -> np.ndarray:
    """(N, P) flat patch scores -> (N, g, g) square grids."""
    side = int(round(np.sqrt(maps.shape[-1])))
    if side * side != maps.shape[-1]:
        raise ValueError(f"{maps.shape[-1]} patches do not form a square grid")
    return maps.reshape(*maps.shape[:-1], side, side)
