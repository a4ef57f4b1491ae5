from __future__ import annotations

import sys

import numpy as np
import pytest

from zsad.scoring import lnamd
from zsad.scoring.lnamd import _box_mean


def _reference(tokens: np.ndarray, r: int, h: int, w: int) -> np.ndarray:
    """Loop-by-loop LNAMD in the (C, H, W) layout of the public code, in float64."""
    n, _, c = tokens.shape
    out = np.zeros((n, h * w, c))
    pad = (r - 1) // 2
    for i in range(n):
        grid = tokens[i, 1:].astype(np.float64).T.reshape(c, h, w)
        grid = (grid - grid.mean()) / np.sqrt(grid.var() + 1e-5)
        pooled = np.zeros_like(grid)
        for ch in range(c):
            for y in range(h):
                for x in range(w):
                    total = 0.0
                    for dy in range(-pad, pad + 1):
                        for dx in range(-pad, pad + 1):
                            if 0 <= y + dy < h and 0 <= x + dx < w:
                                total += grid[ch, y + dy, x + dx]
                    pooled[ch, y, x] = total / (r * r)
        patches = pooled.reshape(c, h * w).T
        out[i] = patches / np.linalg.norm(patches, axis=1, keepdims=True)
    return out


@pytest.mark.parametrize("r", [1, 3, 5])
def test_matches_loop_reference_on_non_square_grid(r):
    rng = np.random.default_rng(r)
    # Channels with very different offsets and scales: a per-token LayerNorm would differ here.
    tokens = rng.normal(size=(2, 1 + 12, 5)) * np.array([1, 10, 0.1, 3, 1]) + np.arange(5)
    out = lnamd(tokens.astype(np.float32), r, grid=(3, 4))
    assert out.dtype == np.float32 and out.shape == (2, 12, 5)
    np.testing.assert_allclose(out, _reference(tokens.astype(np.float32), r, 3, 4), atol=2e-6)


def test_layernorm_is_joint_over_channels_and_positions():
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(1, 1 + 9, 4)).astype(np.float32)
    shifted = tokens.copy()
    # A per-token LayerNorm would cancel a per-token offset; the joint one must not.
    shifted[0, 1:] += np.arange(9, dtype=np.float32)[:, None]
    assert not np.allclose(lnamd(tokens, 1), lnamd(shifted, 1), atol=1e-3)
    # Joint normalisation is invariant to one affine change of the whole image.
    np.testing.assert_allclose(lnamd(tokens, 3), lnamd(tokens * 50 + 7, 3), atol=1e-5)


def test_box_mean_border_counts_zero_padding():
    x = np.arange(1, 1 + 3 * 3 * 2, dtype=np.float32).reshape(3, 3, 2)
    out = _box_mean(np, x[None], 3)[0]
    corner = (x[0, 0] + x[0, 1] + x[1, 0] + x[1, 1]) / 9
    edge = x[0:2, :].sum(axis=(0, 1)) / 9
    np.testing.assert_allclose(out[0, 0], corner, rtol=1e-6)
    np.testing.assert_allclose(out[0, 1], edge, rtol=1e-6)
    np.testing.assert_allclose(out[1, 1], x.sum(axis=(0, 1)) / 9, rtol=1e-6)


def test_unit_norms_and_cls_ignored():
    rng = np.random.default_rng(1)
    tokens = rng.normal(size=(3, 1 + 16, 8)).astype(np.float32)
    out = lnamd(tokens, 3)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-6)
    other_cls = tokens.copy()
    other_cls[:, 0] = 1e6
    np.testing.assert_array_equal(lnamd(other_cls, 3), out)


def test_input_left_untouched():
    tokens = np.random.default_rng(2).normal(size=(2, 1 + 4, 3)).astype(np.float32)
    before = tokens.copy()
    lnamd(tokens, 1)
    np.testing.assert_array_equal(tokens, before)


@pytest.mark.parametrize(
    ("shape", "r", "grid"),
    [
        ((2, 1 + 10, 4), 1, None),
        ((2, 1 + 9, 4), 2, None),
        ((2, 1 + 9, 4), 1, (2, 4)),
        ((2, 1, 4), 1, None),
    ],
)
def test_rejects_bad_arguments(shape, r, grid):
    with pytest.raises(ValueError):
        lnamd(np.zeros(shape, dtype=np.float32), r, grid)


@pytest.mark.parametrize("r", [1, 5])
def test_gpu_code_path_on_numpy(monkeypatch, numpy_as_gpu, r):
    """The GPU branch (chunks of images per launch) gives the CPU branch's features."""
    tokens = np.random.default_rng(r).normal(size=(5, 1 + 12, 6)).astype(np.float32)
    expected = lnamd(tokens, r, grid=(3, 4))
    # The package exports the function under the module's name, so patch the module object.
    module = sys.modules["zsad.scoring.lnamd"]
    monkeypatch.setattr(module, "module_of", lambda array: numpy_as_gpu)
    # Two images per chunk, so the last chunk is a partial one.
    monkeypatch.setattr(module, "LNAMD_GPU_CHUNK", 2 * 12 * 6 * 4)
    np.testing.assert_allclose(lnamd(tokens, r, grid=(3, 4)), expected, rtol=0, atol=1e-6)


@pytest.mark.gpu
def test_gpu_features_stay_on_the_gpu_and_match(cupy_device):
    cupy = cupy_device
    tokens = np.random.default_rng(3).normal(size=(9, 1 + 1369, 64)).astype(np.float32)
    for r in (1, 3, 5):
        out = lnamd(cupy.asarray(tokens), r)
        assert isinstance(out, cupy.ndarray) and out.dtype == np.float32
        np.testing.assert_allclose(out.get(), lnamd(tokens, r), atol=1e-5)
