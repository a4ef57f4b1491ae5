from __future__ import annotations

import numpy as np
import pytest

from zsad.scoring import pseudo_temporal_order, rscin, stas
from zsad.scoring.stas import semantic_affinity, semantic_temporal_affinity

# cos(0, 1) = 0.8, cos(0, 2) = 0, cos(1, 2) = 0.6
CLS3 = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])


def _random_case(n, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=n), rng.normal(size=(n, 6)) + 1.0


def test_rscin_hand_computed():
    # Min-max gives s = [0, 1, 0.5]; k = 2 neighbours: 0 -> {0, 1}, 1 -> {1, 0}, 2 -> {2, 1}.
    k2 = np.array([0.8 / 1.8, 1.0 / 1.8, (0.5 + 0.6) / 1.6])
    expected = (np.array([0.0, 1.0, 0.5]) + k2) / 2
    np.testing.assert_allclose(rscin([10.0, 30.0, 20.0], CLS3, k_list=(1, 2)), expected)


def test_rscin_clips_k_to_n_and_guards_constant_scores():
    scores = [10.0, 30.0, 20.0]
    np.testing.assert_array_equal(rscin(scores, CLS3, (50,)), rscin(scores, CLS3, (3,)))
    np.testing.assert_array_equal(rscin([2.0, 2.0, 2.0], CLS3), np.zeros(3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stas_reduces_to_rscin(seed):
    scores, cls = _random_case(15, seed)
    order = pseudo_temporal_order(15, seed)
    for k_list in [(1, 2, 3), (1, 8, 9), (4,)]:
        expected = rscin(scores, cls, k_list)
        for window in (0, 3):
            got = stas(
                scores,
                cls,
                order,
                window=window,
                alpha=1.0,
                k_list=k_list,
                beta=0.0,
                semantic="clip",
            )
            np.testing.assert_array_equal(got, expected)
            rescaled = stas(scores, cls, order, window=window, alpha=1.0, k_list=k_list, beta=0.0)
            assert not np.allclose(rescaled, expected)


def _gram_vectors(gram: np.ndarray) -> np.ndarray:
    """Unit vectors whose pairwise cosines are ``gram``."""
    return np.linalg.cholesky(gram)


# One product's images: cosines in a narrow band 0.6..1.0.
NARROW = np.array([[1.0, 0.9, 0.6], [0.9, 1.0, 0.7], [0.6, 0.7, 1.0]])


def test_semantic_affinity_rescales_the_whole_matrix():
    cls = _gram_vectors(NARROW)
    expected = (NARROW - 0.6) / 0.4
    np.testing.assert_allclose(semantic_affinity(cls, "rescale"), expected, atol=1e-12)
    np.testing.assert_allclose(semantic_affinity(cls, "clip"), NARROW, atol=1e-12)
    np.testing.assert_array_equal(semantic_affinity(np.ones((3, 2)) / 2**0.5), np.ones((3, 3)))
    with pytest.raises(ValueError, match="semantic"):
        semantic_affinity(cls, "affine")


def test_stas_rescaled_semantics_hand_computed():
    # S = [[1, .75, 0], [.75, 1, .25], [0, .25, 1]]; s = [0, 1, .5]; k = 2 keeps self + best.
    k2 = np.array([0.75 / 1.75, 1.0 / 1.75, (0.5 + 0.25) / 1.25])
    expected = (np.array([0.0, 1.0, 0.5]) + k2) / 2
    got = stas([10.0, 30.0, 20.0], _gram_vectors(NARROW), alpha=1.0, k_list=(1, 2), beta=0.0)
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_bank_rows_are_rescaled_over_all_images_in_use():
    # A bank scores one new row; its min-max must span the bank's whole matrix, as for a set.
    _, cls = _random_case(8, 3)
    positions = np.arange(8)
    full = semantic_temporal_affinity(cls, positions, window=2, gamma=0.5, alpha=0.8)
    row = semantic_temporal_affinity(cls, positions, np.array([7]), window=2, gamma=0.5, alpha=0.8)
    np.testing.assert_allclose(row, full[[7]], atol=1e-12)
    assert row[0].min() > 0.0  # the row's own minimum is not the matrix minimum


def test_ema_along_order_hand_computed():
    # alpha = 1 with k = 1 leaves the min-max scores [0, 1, 0.5]; time sequence: images 2, 0, 1.
    got = stas([0.0, 1.0, 0.5], CLS3, order=[2, 0, 1], alpha=1.0, k_list=(1,), beta=0.5)
    # e = 0.5, then 0.5*0.5 + 0.5*0 = 0.25, then 0.5*0.25 + 0.5*1 = 0.625, back in input order.
    np.testing.assert_allclose(got, [0.25, 0.625, 0.5])


def test_result_follows_input_order():
    scores, cls = _random_case(9, 4)
    order = pseudo_temporal_order(9, 1)
    out = stas(scores, cls, order)
    perm = np.random.default_rng(5).permutation(9)
    inverse = np.argsort(perm)
    # Same images at the same times, stored in another input order.
    permuted = stas(scores[perm], cls[perm], inverse[order])
    np.testing.assert_allclose(permuted, out[perm], atol=1e-12)


def test_temporal_weights_only_reach_the_window():
    scores, cls = _random_case(10, 6)
    scores[4], scores[6] = -10.0, 10.0  # min and max inside image 5's window: fixed min-max
    kwargs = {"alpha": 0.0, "window": 2, "gamma": 0.5, "k_list": (2, 3, 5, 8), "beta": 0.0}
    base = stas(scores, cls, **kwargs)
    far = scores.copy()
    far[[0, 1, 2, 8, 9]] = np.random.default_rng(0).uniform(-9, 9, size=5)
    np.testing.assert_allclose(stas(far, cls, **kwargs)[5], base[5], atol=1e-12)
    near = scores.copy()
    near[3] += 5.0
    assert abs(stas(near, cls, **kwargs)[5] - base[5]) > 1e-3


def test_pseudo_temporal_order_is_a_seeded_permutation():
    order = pseudo_temporal_order(50, 3)
    np.testing.assert_array_equal(np.sort(order), np.arange(50))
    np.testing.assert_array_equal(order, pseudo_temporal_order(50, 3))
    assert not np.array_equal(order, pseudo_temporal_order(50, 4))


def test_rejects_bad_arguments():
    scores, cls = _random_case(4, 0)
    with pytest.raises(ValueError):
        stas(scores, cls, order=[0, 1, 1, 2])
    with pytest.raises(ValueError):
        stas(scores, cls[:3])
    with pytest.raises(ValueError):
        stas(scores, cls, beta=1.0)
    with pytest.raises(ValueError):
        rscin(scores, cls, k_list=(0,))
