"""A set's scores depend on its images, not on the order they are listed in; subsets likewise."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from zsad.data.synthetic import make_dataset
from zsad.scoring.pipeline import SetScoringConfig
from zsad.scoring.subsets import split_subsets, subset_count


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("order-data")
    make_dataset(root, seed=3, categories=["wood"], n_good=8, n_defect=2, size=64)
    return sorted((root / "wood" / "test").rglob("*.png"))


def _scores(bundle: Path, images: list[Path], method: str, **kw: object) -> dict[str, tuple]:
    from zsad import Detector

    scoring = SetScoringConfig(method=method, seed=4)
    with Detector.from_bundle(bundle, method=method, device="cpu", scoring=scoring) as det:
        scored = det.score_set(images, **kw)
    return {r.path: (r.score, r.subset, r.patch_map.tobytes()) for r in scored}


@pytest.mark.parametrize(
    ("method", "subsets"),
    [("musc", {}), ("staps", {}), ("musc", {"subset_size": 5}), ("staps", {"divide": 2})],
)
def test_shuffled_inputs_give_identical_scores(
    bundle: Path, images: list[Path], method: str, subsets: dict
) -> None:
    listed = _scores(bundle, images, method, **subsets)
    shuffled = list(images)
    random.Random(7).shuffle(shuffled)
    assert shuffled != images
    assert _scores(bundle, shuffled, method, **subsets) == listed
    assert len({subset for _, subset, _ in listed.values()}) == (2 if subsets else 1)


def test_order_input_takes_the_listing_as_time(bundle: Path, images: list[Path]) -> None:
    from zsad import Detector

    scoring = SetScoringConfig(method="staps", order="input", beta=0.9)
    with Detector.from_bundle(bundle, method="staps", device="cpu", scoring=scoring) as det:
        forwards = {r.path: r.score for r in det.score_set(images)}
        backwards = {r.path: r.score for r in det.score_set(images[::-1])}
    assert forwards != backwards


def test_subsets_share_out_every_folder_and_ignore_the_listing() -> None:
    keys = [f"{i:04x}" for i in range(23)]
    strata = ["good"] * 15 + ["scratch"] * 8
    subsets = split_subsets(keys, [None] * 23, strata, 3, seed=1)
    counts = np.bincount(subsets, minlength=3)
    assert counts.max() - counts.min() <= 1
    for stratum, size in (("good", 15), ("scratch", 8)):
        per = np.bincount(subsets[np.array(strata) == stratum], minlength=3)
        assert per.max() - per.min() <= 1 and per.sum() == size
    order = np.random.default_rng(0).permutation(23)
    again = split_subsets(
        [keys[i] for i in order], [None] * 23, [strata[i] for i in order], 3, seed=1
    )
    assert np.array_equal(again, subsets[order])


def test_no_subset_falls_below_the_floor() -> None:
    assert subset_count(23, subset_size=2) == 4
    assert subset_count(23, divide=10) == 4
    assert subset_count(4, subset_size=1) == 1
    assert subset_count(100, subset_size=30) == 4


def test_a_set_below_the_floor_is_scored_with_a_warning_and_marked(
    bundle: Path, images: list[Path]
) -> None:
    from zsad import Detector

    with Detector.from_bundle(bundle, device="cpu") as det:
        whole = det.score_set(images)
        assert det.notes == []
        small = det.score_set(images[:3])
        assert any("3 images scored against each other" in note for note in det.notes)
    assert {r.set_size for r in whole} == {len(images)}
    assert [r.to_record()["set_size"] for r in small] == [3, 3, 3]


def test_the_default_split_fits_the_memory_budget(bundle: Path, images: list[Path]) -> None:
    from zsad import Detector
    from zsad.errors import ZsadError

    with Detector.from_bundle(bundle, device="cpu") as det:
        roomy = det.plan(images, memory_gb=100)
        tight = det.plan(images, memory_gb=1e-5)
        with pytest.raises(ZsadError, match="not both"):
            det.plan(images, subset_size=5, divide=2)
    assert (roomy.count, roomy.size) == (1, None)
    assert tight.size == 1 and tight.count == len(images) // 5
    assert min(np.bincount(tight.subsets)) >= 5
