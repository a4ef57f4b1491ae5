from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from zsad.errors import ZsadError
from zsad.scoring import mutual_scores

MB = 2**20


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _brute_force(features, topmin_max=0.3, bank=None):
    feats = features.astype(np.float64)
    out = []
    for i, query in enumerate(feats):
        refs = [f for j, f in enumerate(feats) if j != i] if bank is None else bank
        nearest = np.sort(
            [cdist(query, np.asarray(ref, np.float64)).min(axis=1) for ref in refs], axis=0
        )
        k = max(1, int(len(refs) * topmin_max))
        out.append(nearest[:k].mean(axis=0))
    return np.stack(out)


# Budgets in bytes of cosine tile: 5 rows (sub-image, ragged 5/5/3), 2 images (ragged), all.
@pytest.mark.parametrize("budget_bytes", [5 * 13 * 4, 2 * 13 * 13 * 4, 256 * MB])
@pytest.mark.parametrize("n", [2, 3, 7])
def test_matches_brute_force(n, budget_bytes):
    features = _unit(np.random.default_rng(n).normal(size=(n, 13, 8)))
    scores = mutual_scores(features, memory_budget_mb=budget_bytes / MB, device="cpu")
    assert scores.dtype == np.float32 and scores.shape == (n, 13)
    np.testing.assert_allclose(scores, _brute_force(features), atol=1e-5)


@pytest.mark.parametrize("topmin_max", [0.01, 0.5, 1.0])
def test_topmin_max_sets_neighbour_count(topmin_max):
    features = _unit(np.random.default_rng(5).normal(size=(9, 10, 6)))
    scores = mutual_scores(features, topmin_max, memory_budget_mb=0.001, device="cpu")
    np.testing.assert_allclose(scores, _brute_force(features, topmin_max), atol=1e-5)


@pytest.mark.parametrize("budget_bytes", [3 * 13 * 4, 256 * MB])
def test_bank_mode_matches_brute_force(budget_bytes):
    rng = np.random.default_rng(3)
    queries = _unit(rng.normal(size=(4, 13, 8)))
    bank = _unit(rng.normal(size=(6, 11, 8)))
    scores = mutual_scores(queries, bank=bank, memory_budget_mb=budget_bytes / MB, device="cpu")
    np.testing.assert_allclose(scores, _brute_force(queries, bank=bank), atol=1e-5)
    single = mutual_scores(queries[:1], bank=bank, device="cpu")
    np.testing.assert_allclose(single, scores[:1], atol=1e-6)


def test_image_made_of_patches_seen_elsewhere_scores_zero():
    rng = np.random.default_rng(0)
    # Sign vectors scaled by 1/4 in 16-D are exact unit vectors with exact float32 dot products.
    base = rng.choice([-0.25, 0.25], size=(20, 16)).astype(np.float32)
    images = [base]
    for j in range(5):
        copy = base.copy()
        copy[4 * j : 4 * j + 4] = rng.choice([-0.25, 0.25], size=(4, 16))
        images.append(copy[rng.permutation(20)])
    # Every patch of image 0 survives in 4 of the 5 others, so its 2 nearest images hold it.
    scores = mutual_scores(np.stack(images), 0.5, memory_budget_mb=0.002, device="cpu")
    assert np.abs(scores[0]).max() <= 1e-5
    assert scores[1:].max() > 0.5


def test_planted_outlier_patch_scores_highest():
    rng = np.random.default_rng(7)
    template = rng.normal(size=(30, 16))
    features = template + 0.05 * rng.normal(size=(8, 30, 16))
    features[3, 17] = rng.normal(size=16) * 3
    scores = mutual_scores(_unit(features), device="cpu")
    assert np.unravel_index(np.argmax(scores), scores.shape) == (3, 17)


def test_single_image_without_bank_raises():
    with pytest.raises(ValueError, match="at least 2 images"):
        mutual_scores(_unit(np.ones((1, 4, 3))), device="cpu")


def test_rejects_bad_arguments():
    features = _unit(np.random.default_rng(0).normal(size=(3, 4, 5)))
    with pytest.raises(ValueError):
        mutual_scores(features, 0.0, device="cpu")
    with pytest.raises(ValueError):
        mutual_scores(features, bank=features[:, :, :4], device="cpu")
    with pytest.raises(ValueError):
        mutual_scores(features, device="tpu")


def test_gpu_request_without_cupy_is_a_clear_error():
    try:
        import cupy  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("CuPy is installed")
    with pytest.raises(ZsadError, match="CuPy"):
        mutual_scores(_unit(np.ones((2, 4, 3))), device="gpu")


@pytest.mark.parametrize(("half", "tolerance"), [(True, 2e-3), (False, 1e-5)])
def test_gpu_code_path_on_numpy(monkeypatch, numpy_as_gpu, half, tolerance):
    monkeypatch.setattr("zsad.scoring.msm.array_module", lambda device: numpy_as_gpu)
    features = _unit(np.random.default_rng(8).normal(size=(6, 13, 8)))
    bank = _unit(np.random.default_rng(9).normal(size=(3, 13, 8)))
    for budget_bytes in (5 * 13 * 2, 256 * MB):
        for kwargs, expected in (
            ({}, _brute_force(features)),
            ({"bank": bank}, _brute_force(features, bank=bank)),
        ):
            scores = mutual_scores(
                features, memory_budget_mb=budget_bytes / MB, half=half, **kwargs
            )
            assert isinstance(scores, np.ndarray) and scores.dtype == np.float32
            np.testing.assert_allclose(scores, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.gpu
@pytest.mark.parametrize("half", [True, False])
def test_gpu_matches_cpu(half, cupy_device):
    rng = np.random.default_rng(11)
    features = _unit(rng.normal(size=(12, 1369, 64)))
    bank = _unit(rng.normal(size=(5, 1369, 64)))
    for kwargs in ({}, {"bank": bank}):
        cpu = mutual_scores(features, device="cpu", **kwargs)
        gpu = mutual_scores(features, device="gpu", half=half, memory_budget_mb=64, **kwargs)
        np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
