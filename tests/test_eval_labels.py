"""Evaluation on image-level labels (a folder + a label CSV) and always-valid metrics.json."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from helpers import one_line_error, zsad
from zsad.api.results import Result, SetResult
from zsad.data.datasets import Sample, read_labelled_folder
from zsad.data.synthetic import render_sample
from zsad.evaluation.report import evaluate, json_safe, markdown_table, mean_metrics


def _strict_json(text: str) -> Any:
    """json.loads that refuses the NaN/Infinity extensions Python writes but JSON lacks."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not valid JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


class _FakeDetector:
    """Scores each path by the digit in its name: enough to drive evaluate() without a model."""

    image_size = 8
    backend = SimpleNamespace(name="fake")
    settings = {"threshold": float("inf")}

    def score_set(self, paths: list[Path], **_: Any) -> SetResult:
        results = []
        for path in paths:
            score = float(path.stem[-1])
            patch = np.full((4, 4), score, dtype=np.float32)
            results.append(Result(path=str(path), score=score, patch_map=patch, image_size=8))
        return SetResult(results=results, timing={"total_s": 0.0})


def _png(path: Path, seed: int, defect: str | None = None) -> Path:
    image, _ = render_sample("wood", np.random.default_rng(seed), 64, defect)
    Image.fromarray(image).save(path)
    return path


def test_image_labels_give_image_metrics_only_and_strict_json(tmp_path: Path) -> None:
    samples = [
        Sample(tmp_path / "a0.png", label=0, category="xray"),
        Sample(tmp_path / "a1.png", label=0, category="xray"),
        Sample(tmp_path / "a7.png", label=1, category="xray"),
        Sample(tmp_path / "b2.png", label=0, category="only-good"),
        Sample(tmp_path / "b3.png", label=0, category="only-good"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Mean of empty slice" or similar on the way
        payload = evaluate(_FakeDetector(), samples, tmp_path / "eval", echo=lambda line: None)
    text = (tmp_path / "eval" / "metrics.json").read_text()
    metrics = _strict_json(text)
    assert metrics == payload
    assert all("pixel" not in m for m in metrics["categories"].values())
    assert "pixel" not in metrics["mean"]
    assert metrics["categories"]["xray"]["image"]["auroc"] == 1.0
    assert metrics["categories"]["only-good"]["image"] == {
        "auroc": None,
        "ap": None,
        "f1_max": None,
    }
    assert metrics["mean"]["image"]["auroc"] == 1.0  # the undefined category is left out
    assert metrics["settings"]["threshold"] is None
    assert metrics["excluded"] == 0 and all(
        "excluded" not in m for m in metrics["categories"].values()
    )
    table = (tmp_path / "eval" / "metrics.md").read_text()
    assert "pixel" not in table
    assert "| only-good | n/a | n/a | n/a |" in table
    assert (tmp_path / "eval" / "xray" / "results.jsonl").is_file()


def test_mean_skips_undefined_values_and_missing_levels() -> None:
    nan = float("nan")
    per_category = {
        "a": {"image": {"auroc": 0.5, "ap": nan}, "pixel": {"auroc": nan}},
        "b": {"image": {"auroc": 1.0, "ap": nan}},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean = mean_metrics(per_category)
    assert mean == {"image": {"auroc": 0.75, "ap": None}, "pixel": {"auroc": None}}
    table = markdown_table(json_safe(per_category), mean)
    assert table.splitlines()[0] == "| category | image auroc | image ap | pixel auroc |"
    assert "| b | 100.0 | n/a | n/a |" in table


def test_json_safe_turns_every_non_finite_float_into_null() -> None:
    value = {"x": [np.float32("nan"), float("-inf"), (1.5, np.int64(3))], "y": "NaN"}
    assert json_safe(value) == {"x": [None, None, [1.5, 3]], "y": "NaN"}
    _strict_json(json.dumps(json_safe(value), allow_nan=False))


@pytest.fixture(scope="module")
def xray(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flat folder of 8 images (2 defective) and a medical-style CSV: id without extension."""
    root = tmp_path_factory.mktemp("labelled")
    images = root / "scans"
    images.mkdir()
    rows = ["id,label,site"]
    for i in range(8):
        defect = "crack" if i in (2, 5) else None
        _png(images / f"case_{i:03d}.png", 500 + i, defect)
        rows.append(f"case_{i:03d},{'defect' if defect else 'normal'},A")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.slow
def test_eval_folder_with_a_label_csv(xray: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = zsad(
        "eval", str(xray / "scans"), "--dataset", "folder", "--labels", str(xray / "labels.csv"),
        "--model", "zsad-tiny", "--image-size", "56", "--device", "cpu", "--out", str(out),
        "--no-stas",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "RuntimeWarning" not in result.stderr
    metrics = _strict_json((out / "metrics.json").read_text())
    assert set(metrics["categories"]) == {"scans"}
    assert set(metrics["categories"]["scans"]) == {"image"}
    assert set(metrics["mean"]) == {"image"}
    assert 0.0 <= metrics["mean"]["image"]["auroc"] <= 1.0
    assert "pixel" not in (out / "metrics.md").read_text()
    records = (out / "scans" / "results.jsonl").read_text().splitlines()
    names = [Path(json.loads(line)["path"]).name for line in records]
    assert names == [f"case_{i:03d}.png" for i in range(8)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--dataset", "folder"], ["--dataset folder", "--labels"]),
        (["--labels", "labels.csv"], ["--labels", "--dataset folder"]),
        (
            ["--dataset", "folder", "--labels", "labels.csv", "--file-column", "scan"],
            ["labels.csv", "'scan'"],
        ),  # fmt: skip
    ],
)
def test_eval_label_option_mistakes_are_one_line_errors(
    xray: Path, args: list[str], needles: list[str]
) -> None:
    args = [str(xray / a) if a == "labels.csv" else a for a in args]
    result = zsad("eval", str(xray / "scans"), *args, "--model", "zsad-tiny", "--device", "cpu")
    one_line_error(result, *needles)


def test_read_labelled_folder_matches_the_eval_csv(xray: Path) -> None:
    samples = read_labelled_folder(xray / "scans", xray / "labels.csv")
    assert [s.label for s in samples] == [0, 0, 1, 0, 0, 1, 0, 0]


@pytest.mark.slow
def test_calibrate_threshold_reads_an_id_label_csv(
    bundle: Path, xray: Path, tmp_path: Path
) -> None:
    csv_path = tmp_path / "val.csv"
    rows = (xray / "labels.csv").read_text().replace("id,label,", "Scan,Finding,").splitlines()
    csv_path.write_text("\n".join(rows) + "\n")
    result = zsad(
        "calibrate-threshold", str(xray / "scans"), "--bundle", str(bundle), "--bank", "3",
        "--labels", str(csv_path), "--file-column", "scan", "--label-column", "finding",
        "--dry-run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stdout)
    assert entry["rule"] == "f1-max" and entry["defective"] == 2 and entry["images"] == 8
