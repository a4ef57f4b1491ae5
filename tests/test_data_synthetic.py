"""Tests for zsad.data.synthetic: determinism, MVTec layout, exact and visible defect masks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import SOURCE_ROOT
from zsad.data.datasets import read_mvtec
from zsad.data.images import load_image, load_mask
from zsad.data.synthetic import (
    DEFECT_TYPES,
    MARKER_NAME,
    MAX_DEFECT_FRACTION,
    MIN_DEFECT_FRACTION,
    SYNTHETIC_CATEGORIES,
    make_dataset,
    render_sample,
)
from zsad.errors import ZsadError

SMALL = {"n_train": 2, "n_good": 2, "n_defect": 2, "size": 64}


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    assert make_dataset(root, seed=3) == list(SYNTHETIC_CATEGORIES)
    return root


def test_default_categories_mix_textures_and_an_object() -> None:
    assert len(SYNTHETIC_CATEGORIES) >= 4
    assert set(DEFECT_TYPES) == set(SYNTHETIC_CATEGORIES)
    kinds = {kind for kinds in DEFECT_TYPES.values() for kind in kinds}
    assert {"scratch", "stain"} <= kinds
    assert kinds & {"hole", "missing"}


def test_same_seed_gives_identical_bytes_and_rerun_replaces(tmp_path: Path) -> None:
    make_dataset(tmp_path / "a", seed=7, **SMALL)
    make_dataset(tmp_path / "b", seed=7, **SMALL)
    first = _tree_bytes(tmp_path / "a")
    assert first == _tree_bytes(tmp_path / "b")
    make_dataset(tmp_path / "a", seed=7, **{**SMALL, "n_defect": 3})
    make_dataset(tmp_path / "a", seed=7, **SMALL)
    assert _tree_bytes(tmp_path / "a") == first
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(SYNTHETIC_CATEGORIES)


@pytest.mark.slow
def test_output_does_not_depend_on_the_process_hash_seed(tmp_path: Path) -> None:
    script = (
        "import sys; from zsad.data.synthetic import make_dataset; "
        "make_dataset(sys.argv[1], seed=5, categories=['disc'], n_train=1, n_good=1, "
        "n_defect=1, size=32)"
    )
    # str hashes are salted per process, so this catches any use of hash() in seeding.
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": SOURCE_ROOT}
        out = tmp_path / hash_seed
        subprocess.run([sys.executable, "-c", script, str(out)], env=env, check=True)
    assert _tree_bytes(tmp_path / "1") == _tree_bytes(tmp_path / "2")


def test_different_seed_gives_different_images(tmp_path: Path) -> None:
    make_dataset(tmp_path / "a", seed=1, categories=["grid"], **SMALL)
    make_dataset(tmp_path / "b", seed=2, categories=["grid"], **SMALL)
    first, second = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert first.keys() == second.keys()
    pngs = [name for name in first if name.endswith(".png")]
    assert all(first[name] != second[name] for name in pngs)


def test_layout_is_readable_as_mvtec(dataset: Path) -> None:
    test = read_mvtec(dataset)
    train = read_mvtec(dataset, split="train")
    expected_order = sorted(SYNTHETIC_CATEGORIES)
    assert [s.category for s in train] == [c for c in expected_order for _ in range(10)]
    for category in expected_order:
        samples = [s for s in test if s.category == category]
        assert sum(s.label == 0 for s in samples) == 8
        defects = sorted({s.defect for s in samples if s.label == 1})
        assert defects == sorted(DEFECT_TYPES[category])
        assert sum(s.label == 1 for s in samples) == 4 * len(defects)
        assert all((s.mask_path is None) == (s.label == 0) for s in samples)


def test_images_are_rgb_of_the_requested_size(dataset: Path) -> None:
    for sample in read_mvtec(dataset)[::7]:
        image = load_image(sample.path)
        assert image.shape == (128, 128, 3)


def test_masks_cover_a_plausible_area(dataset: Path) -> None:
    for sample in read_mvtec(dataset):
        if sample.mask_path is None:
            continue
        mask = load_mask(sample.mask_path)
        assert MIN_DEFECT_FRACTION <= mask.mean() <= MAX_DEFECT_FRACTION, sample.path
        assert set(np.unique(load_image(sample.mask_path))) == {0, 255}


def test_defect_pixels_stand_out_from_good_images(dataset: Path) -> None:
    # A loose part has no typical look at a given pixel, so this holds for the others only.
    for category in (c for c in SYNTHETIC_CATEGORIES if not c.startswith("loose_")):
        samples = read_mvtec(dataset, categories=[category])
        goods = np.stack([load_image(s.path) for s in samples if s.label == 0]).astype(float)
        # The per-pixel median of good images is what "normal" looks like at each place.
        typical = np.median(goods, axis=0)
        spread = np.abs(goods - typical).mean()
        for sample in (s for s in samples if s.label == 1):
            image = load_image(sample.path).astype(float)
            mask = load_mask(sample.mask_path)
            inside = np.abs(image[mask] - typical[mask]).mean()
            assert inside > max(2 * spread, spread + 25), (sample.path, inside, spread)


@pytest.mark.parametrize(
    ("category", "defect"),
    [(category, defect) for category in SYNTHETIC_CATEGORIES for defect in DEFECT_TYPES[category]],
)
def test_mask_is_exactly_where_the_defect_changed_pixels(category: str, defect: str) -> None:
    for index in range(3):
        clean, no_mask = render_sample(category, np.random.default_rng([index]), 96)
        image, mask = render_sample(category, np.random.default_rng([index]), 96, defect)
        assert not no_mask.any()
        difference = np.abs(image.astype(int) - clean.astype(int)).max(axis=2)
        assert not difference[~mask].any()
        assert difference[mask].mean() > 40
        assert (difference[mask] > 10).mean() > 0.9


def test_good_images_differ_but_share_statistics(dataset: Path) -> None:
    for category in SYNTHETIC_CATEGORIES:
        goods = [s for s in read_mvtec(dataset, categories=[category]) if s.label == 0]
        images = [load_image(s.path).astype(float) for s in goods]
        assert not np.array_equal(images[0], images[1])
        means = np.array([image.mean(axis=(0, 1)) for image in images])
        assert np.ptp(means, axis=0).max() < 8


def test_existing_foreign_folder_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "grid" / "test").mkdir(parents=True)
    with pytest.raises(ZsadError, match="refusing to replace"):
        make_dataset(tmp_path, categories=["grid"], **SMALL)
    assert not (tmp_path / "grid" / MARKER_NAME).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["grid"]


@pytest.mark.parametrize(
    ("options", "option_name"),
    [
        ({"categories": ["nope"]}, "category"),
        ({"seed": -1}, "seed"),
        ({"size": 8}, "size"),
        ({"n_good": -1}, "n_good"),
        ({"n_good": 0, "n_defect": 0}, "n_good"),
    ],
)
def test_bad_options_raise(tmp_path: Path, options: dict[str, object], option_name: str) -> None:
    with pytest.raises(ZsadError, match=option_name):
        make_dataset(tmp_path, **options)
