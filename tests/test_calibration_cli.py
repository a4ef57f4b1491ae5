"""`zsad calibrate` run as a user would: artifact and checkpoint written, resume, ablations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import one_line_error, zsad
from zsad.data.synthetic import make_dataset
from zsad.formats.artifact import load_artifact
from zsad.formats.local_path import LocalPath

pytestmark = pytest.mark.slow

TINY = ("--model", "zsad-tiny", "--image-size", "56", "--batch-size", "4")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("calib-data")
    make_dataset(
        root, seed=0, categories=["grid", "wood"], n_train=0, n_good=3, n_defect=1, size=64
    )
    return root


def test_calibrate_writes_an_artifact_and_resumes(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "headclip.safetensors"
    first = zsad("calibrate", str(dataset), "--out", str(out), "--epochs", "2", *TINY)
    assert first.returncode == 0, first.stderr
    assert "wrote" in first.stdout and "2 epochs" in first.stdout
    artifact = load_artifact(out, backbone="zsad-tiny", image_size=56)
    assert artifact.text_embeddings.shape == (2, 64)
    hp = artifact.hyperparameters
    assert hp["categories"] == ["grid", "wood"] and hp["train_images"] == 12
    assert hp["jas_r"] == 0.5 and hp["top_k"] == 1.0 and hp["lhw"] is True
    assert len(hp["epoch_losses"]) == 2
    assert (tmp_path / "headclip.safetensors.ckpt").is_file()

    more = zsad("calibrate", str(dataset), "--out", str(out), "--epochs", "3", "--resume", *TINY)
    assert more.returncode == 0, more.stderr
    assert "3 epochs" in more.stdout and "3 steps" in more.stdout  # only the third epoch ran
    resumed = load_artifact(out).hyperparameters["epoch_losses"]
    assert resumed[:2] == hp["epoch_losses"] and len(resumed) == 3

    changed = zsad("calibrate", str(dataset), "--out", str(out), "--lr", "0.01", "--resume", *TINY)
    one_line_error(changed, "--resume", "other settings")


def test_ablation_flags(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "ablation.safetensors"
    args = ("--out", str(out), "--epochs", "1", "--no-lhw", "--no-jas", "--categories", "grid")
    # The paper's own reading of the local path, read out after two blocks (as in its Table 7).
    variant = ("--local-path", "sum", "--csa-layers", "2-6", "--readout-layers", "4,6")
    result = zsad("calibrate", str(dataset), *args, *variant, *TINY)
    assert result.returncode == 0, result.stderr
    assert "(first step) ->" in result.stdout
    artifact = load_artifact(out)
    np.testing.assert_array_equal(artifact.head_weights, 1.0)
    assert artifact.head_weights.shape == (5, 4)
    assert artifact.local_path == LocalPath("sum", (2, 3, 4, 5, 6), (4, 6))
    assert artifact.hyperparameters["jas_r"] == 1.0
    assert artifact.hyperparameters["categories"] == ["grid"]
    # Inference takes the artifact's local path; asking for another one is an error.
    image = str(dataset / "wood" / "test" / "good" / "000.png")
    headclip = ("--method", "headclip", "--calibration", str(out), "--model", "zsad-tiny")
    wrong = zsad("infer", image, *headclip, "--local-path", "residual")
    one_line_error(wrong, "--local-path residual", "trained with local path sum")
    bad = ("--out", str(tmp_path / "b.safetensors"), "--readout-layers", "1", *TINY)
    one_line_error(zsad("calibrate", str(dataset), *bad), "--readout-layers", "starts at CSA")


def test_user_errors_are_one_line(dataset: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "a.safetensors")
    one_line_error(zsad("calibrate", str(dataset), "--dataset", "visa", "--out", out), "--dataset")
    one_line_error(
        zsad("calibrate", str(dataset), "--out", out, "--resume", *TINY), "no checkpoint"
    )
