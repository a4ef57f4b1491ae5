"""Aligned MSM (--align-window): the windowed search, its equality with global MSM on a window
over the whole grid, defects of place on a fixtured part, and the alignment check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import ENV, one_line_error, zsad
from zsad.data.synthetic import make_dataset
from zsad.scoring import mutual_scores
from zsad.scoring.aligned import (
    _row_chunks,
    aligned_nearest_cosines,
    alignment_check,
    alignment_report,
)
from zsad.scoring.msm import _nearest_cosines
from zsad.scoring.pipeline import SetScoringConfig
from zsad.scoring.stream import RollingStaps

MB = 2**20


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _windowed_brute_force(query: np.ndarray, ref: np.ndarray, window: int, symmetric: bool):
    """best[p, i, j] by definition: every pair of patches, kept when within the window."""
    n, p, _ = query.shape
    side = int(np.sqrt(p))
    ys, xs = np.divmod(np.arange(p), side)
    near = (np.abs(ys[:, None] - ys[None]) <= window) & (np.abs(xs[:, None] - xs[None]) <= window)
    best = np.full((p, n, ref.shape[0]), -np.inf, np.float32)
    for i in range(n):
        for j in range(ref.shape[0]):
            if not (symmetric and i == j):
                cos = query[i].astype(np.float64) @ ref[j].T.astype(np.float64)
                best[:, i, j] = np.where(near, cos, -np.inf).max(axis=1)
    return best


def _assert_matches_definition(features, ref, window: int, symmetric: bool, budget: int) -> None:
    got = aligned_nearest_cosines(np, features, ref, window, symmetric, budget)
    expected = _windowed_brute_force(features, ref, window, symmetric)
    assert got.shape == expected.shape
    finite = np.isfinite(expected)
    assert (np.isfinite(got) == finite).all()
    np.testing.assert_allclose(got[finite], expected[finite], atol=1e-6)


@pytest.mark.parametrize("window", [0, 1, 2, 4])
@pytest.mark.parametrize("budget", [3000, 256 * MB])
@pytest.mark.parametrize("workers", [1, 3])
def test_window_search_matches_its_definition(monkeypatch, window, budget, workers) -> None:
    # Chunks of rows on threads fill table parts of their own, merged: no lost maximum.
    monkeypatch.setattr("zsad.scoring.aligned._cpu_workers", lambda rows: workers)
    rng = np.random.default_rng(window)
    features = _unit(rng.normal(size=(5, 49, 8)))
    bank = _unit(rng.normal(size=(3, 49, 8)))
    # A tiny budget forces steps of one row and few tiles: every edge case of the halos.
    for ref, symmetric in ((features, True), (bank, False)):
        _assert_matches_definition(features, ref, window, symmetric, budget)


@pytest.mark.parametrize("tile_columns", [1, 6, 40])
@pytest.mark.parametrize(("n", "side"), [(2, 9), (3, 6), (6, 11)])
def test_tiles_of_any_width_on_odd_grids_match_the_definition(
    monkeypatch, tile_columns, n, side
) -> None:
    # Tiles of 1 to several columns, a last tile cut by the grid's edge, tiles that start past
    # the first column (where a set's own row is multiplied from the tile's first column on).
    monkeypatch.setattr("zsad.scoring.aligned._CPU_TILE_COLUMNS", tile_columns)
    monkeypatch.setattr("zsad.scoring.aligned._small_gemm_limit", lambda: 0)
    rng = np.random.default_rng(side)
    features = _unit(rng.normal(size=(n, side * side, 8)))
    bank = _unit(rng.normal(size=(4, side * side, 8)))
    for window in (1, 2, 3):
        for ref, symmetric in ((features, True), (bank, False)):
            _assert_matches_definition(features, ref, window, symmetric, 256 * MB)


@pytest.mark.parametrize("group", [1, 2, 3])
@pytest.mark.parametrize("workers", [1, 2])
def test_one_patch_tiles_against_groups_of_halo_columns_match_the_definition(
    monkeypatch, group, workers
) -> None:
    # Where BLAS multiplies small GEMMs without packing, tiles are single patches and each halo
    # row is cut into groups of columns small enough for that, the last one padded.
    n, side, c = 4, 9, 8
    monkeypatch.setattr("zsad.scoring.aligned._small_gemm_limit", lambda: group * n * n * c)
    monkeypatch.setattr("zsad.scoring.aligned._cpu_workers", lambda rows: workers)
    rng = np.random.default_rng(group)
    features = _unit(rng.normal(size=(n, side * side, c)))
    # A bank of as many images: a tile of one bank column is a view of the bank.
    bank = _unit(rng.normal(size=(n, side * side, c)))
    for window in (1, 2, 4):
        for ref, symmetric in ((features, True), (bank, False)):
            _assert_matches_definition(features, ref, window, symmetric, 256 * MB)


@pytest.mark.parametrize(("side", "workers"), [(37, 2), (37, 3), (5, 4), (3, 1), (2, 8)])
def test_row_chunks_cover_the_grid_in_nearly_equal_parts(side, workers) -> None:
    chunks = _row_chunks(side, workers)
    assert [y for rows in chunks for y in rows] == list(range(side))
    sizes = [len(rows) for rows in chunks]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    # A chunk per worker at least where the grid is tall enough, one without threads.
    assert len(chunks) == (1 if workers == 1 else min(side, 2 * workers))


def test_a_window_over_the_whole_grid_is_global_msm() -> None:
    rng = np.random.default_rng(3)
    features = _unit(rng.normal(size=(6, 36, 16)))
    bank = _unit(rng.normal(size=(4, 36, 16)))
    for kwargs in ({}, {"bank": bank}):
        exact = mutual_scores(features, device="cpu", **kwargs)
        for window in (5, 9):
            aligned = mutual_scores(features, device="cpu", align_window=window, **kwargs)
            np.testing.assert_array_equal(aligned, exact)
    # The tiled kernel itself, at a window over the grid, finds the global nearest neighbours
    # (to float32 rounding: BLAS sums the two GEMM shapes in different orders).
    for ref, symmetric in ((features, True), (bank, False)):
        tiled = aligned_nearest_cosines(np, features, ref, 5, symmetric, 4096)
        whole = _nearest_cosines(np, features, ref, symmetric, 64 * MB).transpose(2, 1, 0)
        np.testing.assert_allclose(tiled, whole, atol=1e-6)


def _fixtured_part(n: int, side: int, channels: int, seed: int) -> np.ndarray:
    """Unit features of a part in a fixture: holes in plain metal, laid out the same in every
    image (a hole every 6 cells), a little noise, each image shifted by up to one cell."""
    rng = np.random.default_rng(seed)
    metal, hole = rng.normal(size=(2, channels))
    layout = np.zeros((side, side), bool)
    layout[1::6, 1::6] = True
    images = []
    for _ in range(n):
        here = np.roll(layout, rng.integers(0, 2, size=2), axis=(0, 1))
        clean = np.where(here[:, :, None], hole, metal)
        images.append(clean + 0.15 * rng.normal(size=clean.shape))
    return _unit(np.stack(images).reshape(n, side * side, channels))


def test_a_hole_out_of_place_on_a_fixtured_part_is_found_only_by_position() -> None:
    features = _fixtured_part(12, 12, 32, seed=5)
    # Image 0 has a one-cell hole drilled midway between its holes: a hole looks normal,
    # every image has several, only not at that place.
    # Holes sit at rows/columns 1-2 and 7-8, never at (0, 0): the cell least like it is one.
    hole = features[0, np.argmin(features[0] @ features[0, 0])]
    defect = 4 * 12 + 4
    features = features.copy()
    features[0, defect] = hole
    aligned = mutual_scores(features, device="cpu", align_window=1)
    global_ = mutual_scores(features, device="cpu")
    assert aligned[0].argmax() == defect
    assert aligned[0, defect] > 1.5 * np.delete(aligned[0], defect).max()
    # Global MSM finds holes in every image and sees nothing wrong.
    assert global_[0, defect] < np.delete(global_[0], defect).max()


def test_alignment_check_tells_fixtured_from_loose_parts() -> None:
    # Encoder-like width: in many dimensions near-equal matches are about equally near.
    fixtured = _fixtured_part(10, 12, 128, seed=2)
    check = alignment_check(fixtured, 1)
    assert check["aligned"] and check["nn_inside_window"] > 0.95
    assert check["peak_inflation"] < 1.1
    assert alignment_report(check).startswith("alignment:")
    # The same part laid anywhere: shifted by up to 4 cells, beyond a window of 1.
    rng = np.random.default_rng(1)
    loose = fixtured.reshape(10, 12, 12, 128).copy()
    for i in range(10):
        loose[i] = np.roll(loose[i], rng.integers(-4, 5, size=2), axis=(0, 1))
    check = alignment_check(loose.reshape(10, 144, 128), 1)
    # Most of it is plain metal, found anywhere; its holes are what a window of 1 misses.
    assert not check["aligned"] and check["peak_inflation"] > 2
    assert alignment_report(check).startswith("warning:")


def test_a_window_spanning_the_grid_is_a_warning_naming_the_widest_useful_one() -> None:
    fixtured = _fixtured_part(4, 12, 32, seed=2)
    assert alignment_report(alignment_check(fixtured, 5)).startswith("alignment:")
    for window in (6, 11, 1000):  # 2W+1 >= 12: the centre patches search the whole grid
        check = alignment_check(fixtured, window)
        assert check["grid_side"] == 12 and check["nn_inside_window"] > 0.95
        report = alignment_report(check)
        assert report.startswith(f"warning: alignment: --align-window {window} covers the whole ")
        assert "12 x 12 patch grid" in report and "use --align-window 5 or less" in report


def test_gpu_code_path_on_numpy(monkeypatch, numpy_as_gpu) -> None:
    rng = np.random.default_rng(4)
    features = _unit(rng.normal(size=(5, 64, 8)))
    bank = _unit(rng.normal(size=(3, 64, 8)))
    cases = [{}, {"bank": bank}]
    cpu = [mutual_scores(features, device="cpu", align_window=2, **kwargs) for kwargs in cases]
    monkeypatch.setattr("zsad.scoring.msm.array_module", lambda device: numpy_as_gpu)
    for kwargs, expected in zip(cases, cpu, strict=True):
        # Whole grid rows per tile on the GPU, float32 and float16 products; a tiny budget
        # halves the tiles until a row's product fits.
        for half, tolerance in ((False, 1e-5), (True, 2e-3)):
            for budget_mb in (256, 0.004):
                gpu = mutual_scores(
                    features, align_window=2, half=half, memory_budget_mb=budget_mb, **kwargs
                )
                np.testing.assert_allclose(gpu, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.gpu
@pytest.mark.parametrize("half", [True, False])
def test_gpu_matches_cpu(half, cupy_device) -> None:
    rng = np.random.default_rng(12)
    features = _unit(rng.normal(size=(10, 1369, 64)))
    bank = _unit(rng.normal(size=(6, 1369, 64)))
    for window in (1, 3):
        for kwargs in ({}, {"bank": bank}):
            cpu = mutual_scores(features, device="cpu", align_window=window, **kwargs)
            gpu = mutual_scores(features, device="gpu", half=half, align_window=window, **kwargs)
            np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3 if half else 1e-4)
        gpu_check = alignment_check(cupy_device.asarray(features), window)
        assert gpu_check == alignment_check(features, window)


def test_memory_budget_bounds_the_buffers() -> None:
    import tracemalloc

    features = _unit(np.random.default_rng(0).normal(size=(8, 1024, 256)))
    tracemalloc.start()
    mutual_scores(features, device="cpu", align_window=2, memory_budget_mb=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    table = 1024 * 8 * 8 * 4
    # The best-cosine table and its top-k copy, plus buffers held to the 1 MB budget (an
    # unbounded band of the 32 x 12 columns around a tile would take 3 MB).
    assert peak < 3 * table + 1.5 * MB


def test_stream_reports_alignment_once_after_warm_up() -> None:
    rng = np.random.default_rng(0)
    part = rng.normal(size=(1, 2, 1 + 64, 16)).astype(np.float32)
    config = SetScoringConfig(r_list=(1,), use_stas=False, align_window=1, device="cpu")
    rolling = RollingStaps(config, bank=4, image_size=112)  # an 8 x 8 grid of 14 px patches
    for position in range(6):
        taps = part[0] + 0.05 * rng.normal(size=part.shape[1:]).astype(np.float32)
        rolling.add(taps, rng.normal(size=8), position)
        if position < 3:
            assert rolling.alignment is None and rolling.notes() == []
        elif position == 3:
            assert rolling.alignment is not None and rolling.alignment["align_window"] == 1
            assert [line.split(":")[0] for line in rolling.notes()] == ["alignment"]
        else:
            assert rolling.notes() == []


def test_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="align_window"):
        SetScoringConfig(align_window=-1)
    with pytest.raises(ValueError, match="align_window"):
        mutual_scores(_unit(np.ones((2, 4, 3))), align_window=-1)


@pytest.fixture(scope="module")
def fixtured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fixtured")
    make_dataset(root, seed=0, categories=["chip"], n_train=0, n_good=4, n_defect=1, size=64)
    return root


@pytest.mark.slow
def test_infer_reports_alignment_and_cli_checks_the_option(fixtured: Path, tmp_path: Path) -> None:
    images = str(fixtured / "chip" / "test")
    common = ("--model", "zsad-tiny", "--pretrained", "random", "--image-size", "56")
    result = zsad(
        "infer", images, "-r", "--out", str(tmp_path / "out"), "--align-window", "1",
        "--no-overlays", "--no-progress", *common,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["settings"]["align_window"] == 1
    check = summary["info"]["alignment"]
    assert check["align_window"] == 1 and 0.0 <= check["nn_inside_window"] <= 1.0
    assert "zsad: alignment:" in result.stderr or "zsad: warning: alignment:" in result.stderr
    bad = zsad("infer", images, "-r", "--align-window", "-1", *common)
    one_line_error(bad, "--align-window")
    wide = zsad(
        "infer", images, "-r", "--out", str(tmp_path / "wide"), "--align-window", "1000",
        "--no-overlays", "--no-progress", *common,
    )  # fmt: skip
    assert wide.returncode == 0, wide.stderr
    warned = [line for line in wide.stderr.splitlines() if line.startswith("zsad: warning:")]
    assert len(warned) == 1 and "covers the whole 4 x 4 patch grid" in warned[0], wide.stderr
    assert "use --align-window 1 or less" in warned[0]


@pytest.mark.slow
def test_station_reports_alignment_after_warm_up(fixtured: Path, tmp_path: Path) -> None:
    paths = sorted((fixtured / "chip" / "test").glob("*/*.png"))
    out = tmp_path / "station"
    args = [sys.executable, "-m", "zsad", "infer", "--stream", "--out", str(out)]
    args += ["--model", "zsad-tiny", "--pretrained", "random", "--image-size", "56"]
    args += ["--bank", "3", "--align-window", "1", "--no-overlays"]
    listing = "\n".join(map(str, paths)) + "\n"
    result = subprocess.run(args, input=listing, capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr
    reports = [line for line in result.stderr.splitlines() if "alignment:" in line]
    assert len(reports) == 1, result.stderr
    status = json.loads((out / "status.json").read_text())
    assert status["alignment"]["align_window"] == 1 and status["alignment"]["pairs"] >= 1


@pytest.mark.slow
def test_python_api_takes_the_window_like_the_cli() -> None:
    import zsad
    from zsad.api.scorers import staps_settings

    config = zsad.SetScoringConfig(align_window=2)
    assert zsad.MethodOptions(config).scoring.align_window == 2
    # A threshold stored with a stream's settings tells aligned from global scoring.
    assert staps_settings(config, 8)["align_window"] == 2
    assert staps_settings(zsad.SetScoringConfig(), 8)["align_window"] is None


@pytest.mark.slow
def test_eval_stores_the_alignment_check_per_category(fixtured: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = zsad(
        "eval", str(fixtured), "--categories", "chip", "--align-window", "1", "--out", str(out),
        "--model", "zsad-tiny", "--pretrained", "random", "--image-size", "56", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["categories"]["chip"]["alignment"]["align_window"] == 1
    assert "alignment" not in metrics["mean"]
