"""Patch-grid anomaly maps to pixel maps: bilinear upsampling with align_corners=True semantics."""

from __future__ import annotations

import numpy as np


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights whose first and last samples hit the corners."""
    weights = np.zeros((n_out, n_in), np.float32)
    if n_in == 1 or n_out == 1:
        weights[:, 0] = 1.0
        return weights
    pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = (pos - lo).astype(np.float32)
    rows = np.arange(n_out)
    weights[rows, lo] = 1.0 - frac
    weights[rows, lo + 1] = frac
    return weights


def upsample_maps(maps: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """(N, h, w) patch maps -> (N, height, width) float32, bilinear with align_corners=True."""
    width = height if width is None else width
    grid = np.asarray(maps, dtype=np.float32)
    rows = _interp_matrix(grid.shape[-2], height)
    cols = _interp_matrix(grid.shape[-1], width)
    # Separable interpolation as two small matrix products instead of a per-pixel gather.
    return np.matmul(np.matmul(rows, grid), cols.T)


def patch_grid(maps: np.ndarray) -> np.ndarray:
    """(N, P) flat patch scores -> (N, g, g) square grids."""
    side = int(round(np.sqrt(maps.shape[-1])))
    if side * side != maps.shape[-1]:
        raise ValueError(f"{maps.shape[-1]} patches do not form a square grid")
    return maps.reshape(*maps.shape[:-1], side, side)
