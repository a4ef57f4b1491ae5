"""End to end on generated data: the tiny encoder plus training-free scoring finds the defects."""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest

from zsad.data.datasets import read_mvtec
from zsad.data.images import decode_each, load_mask
from zsad.data.synthetic import make_dataset
from zsad.evaluation.metrics import image_metrics, pixel_metrics
from zsad.model import DualPathEncoder, load_clip
from zsad.model.backend import TorchBackend
from zsad.runtime.encode import encode_images
from zsad.scoring.maps import upsample_maps
from zsad.scoring.pipeline import SetScoringConfig, score_set

SIZE = 224


@pytest.fixture(scope="module")
def encoded_categories(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    root = tmp_path_factory.mktemp("synthetic")
    make_dataset(root, seed=0, categories=["fabric", "wood"])
    encoder = DualPathEncoder(load_clip("zsad-tiny"), image_size=SIZE, outputs=("cls", "taps"))
    backend = TorchBackend(encoder, device="cpu")
    result = {}
    for category in ("fabric", "wood"):
        samples = read_mvtec(root, [category])
        paths = [s.path for s in samples]
        encoded = encode_images(backend, decode_each(paths), count=len(paths), progress=False)
        masks = np.stack(
            [
                load_mask(s.mask_path, (SIZE, SIZE))
                if s.mask_path
                else np.zeros((SIZE, SIZE), bool)
                for s in samples
            ]
        )
        labels = np.array([s.label for s in samples])
        result[category] = (encoded, labels, masks)
    return result


@pytest.mark.parametrize("category", ["fabric", "wood"])
@pytest.mark.parametrize(
    "config",
    [SetScoringConfig(method="musc"), SetScoringConfig(method="staps", beta=0.0)],
    ids=["musc", "staps-no-ema"],
)
def test_defects_outrank_good_images_and_maps_hit_the_masks(
    encoded_categories: dict[str, tuple], category: str, config: SetScoringConfig
) -> None:
    encoded, labels, masks = encoded_categories[category]
    scores = score_set(encoded.outputs["taps"], encoded.outputs["cls"], config, image_size=SIZE)
    assert image_metrics(labels, scores.image_scores)["auroc"] >= 0.9
    maps = upsample_maps(scores.patch_maps, SIZE)
    assert pixel_metrics(masks, maps)["auroc"] >= 0.9


def test_staps_records_its_choices(encoded_categories: dict[str, tuple]) -> None:
    encoded, _, _ = encoded_categories["fabric"]
    scores = score_set(
        encoded.outputs["taps"],
        encoded.outputs["cls"],
        SetScoringConfig(method="staps", seed=3),
        image_size=SIZE,
    )
    n = len(encoded)
    assert sorted(scores.info["order"]) == list(range(n))
    weights = scores.info["bgmps"]["weights"]
    assert abs(sum(weights) - 1.0) < 1e-4
    assert len(weights) == len(scores.info["bgmps"]["selected"])
    # 4 taps x 3 aggregation degrees
    assert scores.info["n_experts"] == 12


def test_input_order_changes_only_the_sequence_not_the_maps(
    encoded_categories: dict[str, tuple],
) -> None:
    encoded, _, _ = encoded_categories["wood"]
    taps, cls = encoded.outputs["taps"], encoded.outputs["cls"]
    staps = SetScoringConfig(method="staps")
    shuffled = score_set(taps, cls, replace(staps, order="shuffle"), image_size=SIZE)
    arrival = score_set(taps, cls, replace(staps, order="input"), image_size=SIZE)
    np.testing.assert_array_equal(shuffled.patch_maps, arrival.patch_maps)
    assert arrival.info["order"] == list(range(len(cls)))
    assert not np.allclose(shuffled.image_scores, arrival.image_scores)


def test_the_default_scoring_gives_each_image_the_same_scores_in_any_order(
    encoded_categories: dict[str, tuple],
) -> None:
    # Sets split into subsets, merged from a cluster or listed by folder must not move a score.
    encoded, _, _ = encoded_categories["fabric"]
    taps, cls = encoded.outputs["taps"], encoded.outputs["cls"]
    listed = score_set(taps, cls, SetScoringConfig(), image_size=SIZE)
    for seed in (1, 2):
        order = np.random.default_rng(seed).permutation(len(cls))
        config = SetScoringConfig(seed=seed)
        moved = score_set(taps[order], cls[order], config, image_size=SIZE)
        np.testing.assert_allclose(moved.image_scores, listed.image_scores[order], rtol=1e-5)
        np.testing.assert_allclose(moved.patch_maps, listed.patch_maps[order], rtol=1e-5)


def test_fewer_than_two_images_is_rejected() -> None:
    taps = np.zeros((1, 4, 17, 8), np.float32)
    with pytest.raises(ValueError, match="at least 2"):
        score_set(taps, np.ones((1, 4), np.float32), SetScoringConfig(), image_size=SIZE)


@pytest.mark.slow
def test_gpu_code_path_on_numpy_gives_the_cpu_maps(
    encoded_categories: dict[str, tuple], monkeypatch: pytest.MonkeyPatch, numpy_as_gpu
) -> None:
    """Taps moved to the scoring device once, LNAMD in chunks, MSM in float16: same maps."""
    encoded, _, _ = encoded_categories["wood"]
    taps, cls = encoded.outputs["taps"], encoded.outputs["cls"]
    config = SetScoringConfig(method="musc")
    cpu = score_set(taps, cls, replace(config, device="cpu"), image_size=SIZE)
    monkeypatch.setattr("zsad.scoring.pipeline.array_module", lambda device: numpy_as_gpu)
    monkeypatch.setattr("zsad.scoring.msm.array_module", lambda device: numpy_as_gpu)
    monkeypatch.setattr(sys.modules["zsad.scoring.lnamd"], "module_of", lambda a: numpy_as_gpu)
    disguised = score_set(taps, cls, config, image_size=SIZE)
    np.testing.assert_allclose(disguised.patch_maps, cpu.patch_maps, atol=2e-3)
    np.testing.assert_allclose(disguised.image_scores, cpu.image_scores, atol=2e-3)


@pytest.mark.gpu
def test_scoring_on_the_gpu_gives_the_cpu_maps(
    encoded_categories: dict[str, tuple], cupy_device
) -> None:
    encoded, _, _ = encoded_categories["fabric"]
    taps, cls = encoded.outputs["taps"], encoded.outputs["cls"]
    cpu = score_set(taps, cls, SetScoringConfig(device="cpu"), image_size=SIZE)
    gpu = score_set(taps, cls, SetScoringConfig(device="gpu"), image_size=SIZE)
    np.testing.assert_allclose(gpu.patch_maps, cpu.patch_maps, atol=2e-3)
    assert np.corrcoef(gpu.image_scores, cpu.image_scores)[0, 1] > 0.999
