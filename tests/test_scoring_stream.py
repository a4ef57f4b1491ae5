"""Rolling-bank STAPS: warm-up, scores equal to MSM against the bank, restart, flat memory."""

from __future__ import annotations

import tracemalloc
from dataclasses import replace

import numpy as np
import pytest

from zsad.scoring.lnamd import lnamd
from zsad.scoring.maps import upsample_maps
from zsad.scoring.msm import mutual_scores
from zsad.scoring.pipeline import SetScoringConfig
from zsad.scoring.stas import propagate
from zsad.scoring.stream import RollingStaps

TAPS, PATCHES, CHANNELS, DIM = 2, 16, 8, 6
SIZE = 56  # a 4x4 patch grid at 14 px per patch


def _stream(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((PATCHES + 1, CHANNELS)).astype(np.float32)
    images = []
    for i in range(n):
        taps = base + 0.3 * rng.standard_normal((TAPS, PATCHES + 1, CHANNELS)).astype(np.float32)
        if i % 7 == 6:
            taps[:, 3:6] += 3.0  # a defect on three patches
        images.append((taps, rng.standard_normal(DIM) + 3.0))
    return images


def _run(rolling: RollingStaps, images: list, start: int = 0) -> list:
    results = []
    for i, (taps, cls) in enumerate(images, start=start):
        results += rolling.add(taps, cls, i)
    return results


def test_warm_up_holds_the_first_k_images_then_streams() -> None:
    rolling = RollingStaps(SetScoringConfig(r_list=(1, 3), device="cpu"), bank=5, image_size=SIZE)
    images = _stream(8)
    assert _run(rolling, images[:4]) == [] and rolling.warming_up
    held = _run(rolling, images[4:5], start=4)
    assert [r.position for r in held] == [0, 1, 2, 3, 4]
    assert {r.phase for r in held} == {"warm-up"} and not rolling.warming_up
    streamed = _run(rolling, images[5:], start=5)
    assert [(r.position, r.phase) for r in streamed] == [
        (5, "stream"),
        (6, "stream"),
        (7, "stream"),
    ]
    assert rolling.filled == 5


def test_a_streamed_score_is_msm_against_the_last_k_images() -> None:
    config = SetScoringConfig(r_list=(1, 3), use_stas=False, rscin_k=(1,), device="cpu")
    k = 4
    rolling = RollingStaps(config, bank=k, image_size=SIZE)
    images = _stream(12)
    results = _run(rolling, images)
    for t in (7, 11):
        experts = []
        for tap in range(TAPS):
            for r in (1, 3):
                feats = lnamd(np.stack([images[j][0][tap] for j in range(t - k, t + 1)]), r)
                experts.append(mutual_scores(feats[-1:], bank=feats[:-1], device="cpu")[0])
        expected = np.mean(experts, axis=0)
        np.testing.assert_allclose(results[t].patch_map, expected, rtol=1e-6)
        # The raw score is MuSc's: the maximum of the map upsampled to the input size.
        pixels = upsample_maps(expected.reshape(1, 4, 4), SIZE)
        assert results[t].raw_score == pytest.approx(pixels.max(), rel=1e-6)
        # k = 1 keeps only the row's strongest affinity: the image itself, so no smoothing.
        assert results[t].score == pytest.approx(results[t].raw_score)


@pytest.mark.parametrize("semantic", ["rescale", "clip"])
def test_stas_row_and_ema_carry_over_from_the_bank(semantic: str) -> None:
    config = SetScoringConfig(
        r_list=(1,), use_stas=True, beta=0.5, device="cpu", stas_semantic=semantic
    )
    rolling = RollingStaps(config, bank=3, image_size=SIZE)
    images = _stream(6)
    results = _run(rolling, images)
    # Image 4 is propagated over images 1..4 (its bank and itself), then averaged with 3's score.
    raw = np.array([r.raw_score for r in results[1:5]])
    cls = np.array([images[i][1] for i in range(1, 5)], np.float64)
    unit = cls / np.linalg.norm(cls, axis=1, keepdims=True)
    cosine = unit @ unit.T
    if semantic == "rescale":
        # Min-max over the cosine matrix of all four images in use, not over image 4's row.
        row = (cosine[-1] - cosine.min()) / (cosine.max() - cosine.min())
    else:
        row = np.clip(cosine[-1], 0, 1)
    lag = np.abs(np.arange(1, 5) - 4)
    temporal = np.where(lag <= config.window, config.gamma**lag, 0.0)
    affinity = config.alpha * row + (1 - config.alpha) * temporal
    refined = propagate(raw, affinity[None], config.stas_k, own=raw[-1:])[0]
    assert results[4].score == pytest.approx(0.5 * results[3].score + 0.5 * refined)


def test_a_restart_from_records_continues_with_the_same_scores() -> None:
    config = SetScoringConfig(r_list=(1, 3), use_stas=True, beta=0.5, device="cpu")
    images = _stream(20)
    straight = _run(RollingStaps(config, bank=4, image_size=SIZE), images)
    first = RollingStaps(config, bank=4, image_size=SIZE)
    before = _run(first, images[:11])
    resumed = RollingStaps(config, bank=4, image_size=SIZE)
    resumed.load_state(first.state())
    for r in before[-4:]:
        resumed.restore(*images[r.position], r.position, r.raw_score, r.score)
    after = _run(resumed, images[11:], start=11)
    np.testing.assert_allclose(
        [r.score for r in after], [r.score for r in straight[11:]], rtol=1e-9
    )
    assert resumed.map_range == first.map_range is not None


def test_memory_stays_flat_over_a_long_stream() -> None:
    rolling = RollingStaps(SetScoringConfig(r_list=(1, 3), device="cpu"), bank=6, image_size=SIZE)
    images = _stream(30)
    _run(rolling, images[:10])
    ring = rolling._features
    tracemalloc.start()
    _run(rolling, images * 3, start=10)
    settled, _ = tracemalloc.get_traced_memory()
    _run(rolling, images * 3, start=100)
    later, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert rolling._features is ring and ring.shape == (2 * TAPS, 6, PATCHES, CHANNELS)
    assert later - settled < 64 * 1024, (settled, later)
    assert rolling.bytes_per_image() == 2 * TAPS * PATCHES * CHANNELS * 4 + DIM * 8 + 16


def test_flush_scores_a_short_stream_and_refuses_a_single_image() -> None:
    rolling = RollingStaps(SetScoringConfig(r_list=(1,), device="cpu"), bank=8, image_size=SIZE)
    _run(rolling, _stream(3))
    assert [r.position for r in rolling.flush()] == [0, 1, 2]
    lone = RollingStaps(SetScoringConfig(r_list=(1,), device="cpu"), bank=8, image_size=SIZE)
    _run(lone, _stream(1))
    with pytest.raises(ValueError, match="at least 2"):
        lone.flush()
    with pytest.raises(ValueError, match="at least 2"):
        RollingStaps(SetScoringConfig(), bank=1, image_size=SIZE)


@pytest.mark.gpu
def test_a_bank_on_the_gpu_gives_the_cpu_scores(cupy_device) -> None:
    cupy = cupy_device
    images = _stream(14)
    config = SetScoringConfig(r_list=(1, 3), use_stas=True)
    cpu = _run(RollingStaps(replace(config, device="cpu"), bank=4, image_size=SIZE), images)
    rolling = RollingStaps(replace(config, device="gpu"), bank=4, image_size=SIZE)
    gpu = _run(rolling, images)
    assert isinstance(rolling._features, cupy.ndarray) and rolling._features.dtype == np.float16
    np.testing.assert_allclose([r.score for r in gpu], [r.score for r in cpu], atol=2e-3)
