from __future__ import annotations

import numpy as np
import pytest

from zsad.scoring import BGMPSResult, bgmps

N, P = 8, 64


def _two_groups(seed=0):
    """Experts 0-5: a shared hot-spot pattern; experts 6-11: a smooth image-level trend."""
    rng = np.random.default_rng(seed)
    hot = rng.uniform(0.0, 0.2, size=(N, P))
    hot[2, 10:13] = 5.0
    hot[5, 40] = 4.0
    trend = np.linspace(0.2, 1.0, N)[:, None] * np.ones(P)
    experts = [hot * rng.uniform(0.8, 1.2) + rng.normal(0, 0.02, (N, P)) for _ in range(6)]
    experts += [trend * rng.uniform(0.8, 1.2) + rng.normal(0, 0.02, (N, P)) for _ in range(6)]
    return np.stack(experts).astype(np.float32), hot


@pytest.mark.parametrize("embed", ["dct", "svd"])
@pytest.mark.parametrize("cluster", ["bgmm", "kmeans"])
def test_picks_the_hot_spot_group(embed, cluster):
    experts, hot = _two_groups()
    result = bgmps(experts, embed=embed, cluster=cluster)
    assert isinstance(result, BGMPSResult)
    np.testing.assert_array_equal(result.selected, np.arange(6))
    assert len(set(result.labels[:6])) == 1 and result.labels[6] != result.labels[0]
    assert result.evidence[result.labels[0]] == result.evidence.max()
    assert result.weights.shape == (6,) and np.all(result.weights >= 0)
    assert result.weights.sum() == pytest.approx(1.0)
    assert result.fused.shape == (N, P) and result.fused.dtype == np.float32
    assert np.corrcoef(result.fused.ravel(), hot.ravel())[0, 1] > 0.99


def test_a_larger_distance_scale_does_not_buy_the_selection():
    # Deep taps measure larger distances than shallow ones; the trend group, scaled up, must
    # still lose to the hot-spot group, whose maps show local anomalies.
    experts, hot = _two_groups()
    experts[6:] *= 20.0
    result = bgmps(experts)
    np.testing.assert_array_equal(result.selected, np.arange(6))
    assert np.corrcoef(result.fused.ravel(), hot.ravel())[0, 1] > 0.99
    assert result.fused.max() == pytest.approx(experts[:6].max(), rel=0.25)


def test_deterministic_given_seed():
    experts, _ = _two_groups(1)
    first, second = bgmps(experts, seed=3), bgmps(experts, seed=3)
    np.testing.assert_array_equal(first.fused, second.fused)
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.weights, second.weights)


def test_single_expert_is_returned_as_is():
    experts, _ = _two_groups()
    result = bgmps(experts[:1])
    np.testing.assert_array_equal(result.selected, [0])
    np.testing.assert_array_equal(result.weights, [1.0])
    np.testing.assert_allclose(result.fused, experts[0])


def test_identical_experts_get_uniform_weights():
    experts = np.repeat(_two_groups()[0][:1], 5, axis=0)
    result = bgmps(experts)
    np.testing.assert_array_equal(result.selected, np.arange(5))
    np.testing.assert_allclose(result.weights, 0.2)
    np.testing.assert_allclose(result.fused, experts[0], rtol=1e-6)


def test_anti_correlated_expert_gets_zero_weight():
    experts, _ = _two_groups()
    flipped = np.concatenate([experts[:6], experts[:1].max() - experts[:1]])
    result = bgmps(flipped, n_components=1)
    assert result.weights[6] == 0.0 and result.weights.sum() == pytest.approx(1.0)


def test_rejects_bad_arguments():
    experts, _ = _two_groups()
    with pytest.raises(ValueError):
        bgmps(experts, embed="fft")
    with pytest.raises(ValueError):
        bgmps(experts, cluster="dbscan")
    with pytest.raises(ValueError):
        bgmps(experts[0])
