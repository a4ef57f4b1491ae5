"""The raw image score: MuSc's maximum of the map upsampled bilinearly (align_corners=True)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from typer.testing import CliRunner

from zsad.cli.options import scoring_options
from zsad.formats.thresholds import mismatched_settings
from zsad.scoring.maps import raw_image_scores, upsample_maps, upsampled_max
from zsad.scoring.pipeline import SetScoringConfig, score_set
from zsad.scoring.stas import rscin


def _hand_upsample(grid: list[list[int]], size: int) -> np.ndarray:
    """Bilinear upsampling, align_corners=True, written out pixel by pixel in exact fractions."""
    h, w = len(grid), len(grid[0])
    out = np.empty((size, size), object)
    for i in range(size):
        y = Fraction(i * (h - 1), size - 1)
        y0 = min(int(y), h - 2)
        for j in range(size):
            x = Fraction(j * (w - 1), size - 1)
            x0 = min(int(x), w - 2)
            fy, fx = y - y0, x - x0
            out[i, j] = (1 - fy) * ((1 - fx) * grid[y0][x0] + fx * grid[y0][x0 + 1]) + fy * (
                (1 - fx) * grid[y0 + 1][x0] + fx * grid[y0 + 1][x0 + 1]
            )
    return out


def test_a_centre_peak_is_missed_by_the_pixel_lattice() -> None:
    # 3x3 grid, 6 px: pixels sample rows/columns 0, 0.4, 0.8, 1.2, 1.6, 2 -- never the centre.
    grid = [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    hand = _hand_upsample(grid, 6)
    weights = [Fraction(v, 10) for v in (0, 4, 8, 8, 4, 0)]
    assert hand.tolist() == [[a * b for b in weights] for a in weights]
    assert max(hand.flat) == Fraction(16, 25)
    flat = np.array(grid, np.float32).reshape(1, 9)
    assert raw_image_scores(flat, "upsampled", 6)[0] == pytest.approx(0.64, abs=1e-15)
    assert raw_image_scores(flat, "grid", 6)[0] == 1.0
    np.testing.assert_allclose(upsample_maps(flat.reshape(1, 3, 3), 6)[0], hand.astype(float))


def test_the_maximum_of_an_off_centre_map_is_the_hand_computed_one() -> None:
    grid = [[3, 9, 1, 4], [7, 2, 8, 0], [5, 6, 2, 9], [1, 8, 3, 7]]
    for size in (5, 7, 11, 13):
        hand = _hand_upsample(grid, size)
        ours = upsampled_max(np.array(grid, np.float64)[None], size)[0]
        assert ours == pytest.approx(float(max(hand.flat)), abs=1e-12)


@pytest.mark.parametrize(
    ("grid", "size"),
    [
        ((37, 37), (518, 518)),
        ((37, 37), (224, 224)),
        ((5, 7), (13, 2)),
        ((16, 16), (10, 10)),
        ((4, 4), (4, 4)),
        ((1, 6), (3, 9)),
        ((2, 2), (1, 1)),
    ],
)
def test_the_per_cell_maximum_is_the_maximum_of_torchs_upsample(
    grid: tuple[int, int], size: tuple[int, int]
) -> None:
    maps = np.random.default_rng(sum(grid) + sum(size)).standard_normal((6, *grid))
    reference = F.interpolate(
        torch.from_numpy(maps)[:, None], size=size, mode="bilinear", align_corners=True
    )[:, 0].numpy()
    np.testing.assert_allclose(
        upsampled_max(maps, *size), reference.reshape(6, -1).max(axis=1), rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(
        upsampled_max(maps, *size),
        upsample_maps(maps, *size).reshape(6, -1).max(axis=1),
        rtol=0,
        atol=1e-6,
    )


def test_musc_applies_rscin_to_the_upsampled_maximum() -> None:
    rng = np.random.default_rng(0)
    taps = rng.standard_normal((6, 2, 1 + 16, 8)).astype(np.float32)
    cls = rng.standard_normal((6, 4)).astype(np.float32)
    musc = SetScoringConfig(method="musc", r_list=(1,), device="cpu")
    result = score_set(taps, cls, musc, image_size=56)
    pixels = F.interpolate(
        torch.from_numpy(result.patch_maps.astype(np.float64))[:, None],
        size=(56, 56),
        mode="bilinear",
        align_corners=True,
    )
    expected = pixels.reshape(6, -1).max(dim=1).values.numpy()
    np.testing.assert_allclose(result.raw_image_scores, expected, atol=1e-12)
    np.testing.assert_allclose(result.image_scores, rscin(expected, cls, musc.rscin_k))
    grid_max = result.patch_maps.reshape(6, -1).max(axis=1)
    # Below the grid maximum unless that sits on a corner, which the pixels do hit.
    assert (expected <= grid_max + 1e-7).all() and (expected < grid_max - 1e-4).any()
    grid = score_set(
        taps, cls, SetScoringConfig(method="musc", r_list=(1,), image_score="grid"), image_size=56
    )
    np.testing.assert_array_equal(grid.raw_image_scores, grid.patch_maps.reshape(6, -1).max(1))
    with pytest.raises(ValueError, match="image_score"):
        SetScoringConfig(image_score="mean")


def test_thresholds_from_before_the_setting_count_as_grid_maxima() -> None:
    old = {"method": "staps", "score": 1.0, "settings": {"bank": 8, "topmin_max": 0.3}}
    now = {"bank": 8, "topmin_max": 0.3, "image_score": "upsampled"}
    assert mismatched_settings(old, now) == ["image_score"]
    assert mismatched_settings(old, {**now, "image_score": "grid"}) == []
    recorded = {**old, "settings": now}
    assert mismatched_settings(recorded, now) == []
    # A HeadCLIP entry has no such setting and none is invented for it.
    assert mismatched_settings({"settings": {"jas_r": 0.5}}, {"jas_r": 0.5}) == []


def test_the_cli_option_reaches_the_scoring_config() -> None:
    seen: list[SetScoringConfig] = []
    app = typer.Typer()

    @app.command()
    @scoring_options()
    def run(scoring: SetScoringConfig) -> None:
        seen.append(scoring)

    runner = CliRunner()
    assert runner.invoke(app, []).exit_code == 0
    assert runner.invoke(app, ["--image-score", "grid"]).exit_code == 0
    assert runner.invoke(app, ["--image-score", "mean"]).exit_code != 0
    assert [s.image_score for s in seen] == ["upsampled", "grid"]
