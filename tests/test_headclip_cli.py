"""HeadCLIP through the CLI: calibrate, infer and eval with an artifact, and from a bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import TORCH, one_line_error, zsad
from zsad.data.synthetic import make_dataset

pytestmark = pytest.mark.slow

TINY = ("--model", "zsad-tiny", "--image-size", "56")
COMMON = ("--no-progress", "--no-overlays")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("headclip")
    data = root / "data"
    make_dataset(
        data, seed=0, categories=["grid", "fabric"], n_train=0, n_good=3, n_defect=1, size=64
    )
    artifact = root / "tiny.safetensors"
    result = zsad(
        "calibrate", str(data), "--categories", "grid", "--out", str(artifact),
        "--epochs", "1", "--batch-size", "4", *TINY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return data, artifact


def _scores(out: Path) -> dict[str, float]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return {r["path"]: r["score"] for r in map(json.loads, lines)}


def test_infer_scores_images_one_by_one_and_the_bundle_agrees(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, artifact = trained
    one_image = str(data / "fabric" / "test" / "good" / "000.png")
    single = zsad(
        "infer", one_image, "--method", "headclip", "--calibration", str(artifact),
        "--model", "zsad-tiny", "--out", str(tmp_path / "one"), *COMMON,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr  # no pool of images needed
    images = str(data / "fabric" / "test" / "*" / "*.png")
    torch_run = zsad(
        "infer", images, "--method", "headclip", "--calibration", str(artifact),
        "--model", "zsad-tiny", "--out", str(tmp_path / "torch"), *COMMON,
    )  # fmt: skip
    assert torch_run.returncode == 0, torch_run.stderr
    record = json.loads((tmp_path / "torch" / "results.jsonl").read_text().splitlines()[0])
    assert np.load(tmp_path / "torch" / record["map"]).shape == (56, 56)
    assert 0.0 <= record["score"] <= 1.0

    bundle = tmp_path / "bundle"
    export = zsad(
        "export", "--method", "headclip", "--calibration", str(artifact), *TINY,
        "--out", str(bundle),
    )  # fmt: skip
    assert export.returncode == 0, export.stderr
    onnx_run = zsad(
        "infer", images, "--method", "headclip", "--bundle", str(bundle),
        "--out", str(tmp_path / "onnx"), *COMMON, block=TORCH,
    )  # fmt: skip
    assert onnx_run.returncode == 0, onnx_run.stderr
    reference, scores = _scores(tmp_path / "torch"), _scores(tmp_path / "onnx")
    assert reference.keys() == scores.keys() and len(scores) == 3 + 3
    np.testing.assert_allclose(list(scores.values()), list(reference.values()), atol=1e-4)


def test_eval_reports_the_metric_table(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, artifact = trained
    result = zsad(
        "eval", str(data), "--categories", "fabric", "--method", "headclip",
        "--calibration", str(artifact), "--model", "zsad-tiny", "--jas-r", "1",
        "--out", str(tmp_path / "eval"), "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["settings"]["method"] == "headclip" and metrics["settings"]["jas_r"] == 1.0
    assert set(metrics["categories"]["fabric"]["pixel"]) >= {"auroc", "aupro"}


def test_method_and_calibration_mismatches_are_one_line_errors(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, artifact = trained
    image = str(data / "fabric" / "test" / "good" / "000.png")
    missing = zsad("infer", image, "--method", "headclip", "--model", "zsad-tiny")
    one_line_error(missing, "--calibration")
    wrong_size = zsad(
        "infer", image, "--method", "headclip", "--calibration", str(artifact),
        "--model", "zsad-tiny", "--image-size", "112",
    )  # fmt: skip
    one_line_error(wrong_size, "image size 56")
    stray = zsad("infer", image, "--calibration", str(artifact), "--model", "zsad-tiny")
    one_line_error(stray, "only used with --method headclip")


def test_stream_scores_each_image_on_arrival_like_batch_infer(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    import subprocess
    import sys

    from helpers import ENV

    data, artifact = trained
    images = sorted(str(p) for p in data.glob("fabric/test/*/*.png"))
    headclip = ("--method", "headclip", "--calibration", str(artifact), *TINY)
    batch = zsad("infer", *images, *headclip, "--out", str(tmp_path / "batch"), *COMMON)
    assert batch.returncode == 0, batch.stderr
    stream = subprocess.run(
        [sys.executable, "-m", "zsad", "infer", "--stream", *headclip,
         "--out", str(tmp_path / "stream"), "--no-overlays"],
        input="\n".join(images) + "\n", capture_output=True, text=True, env=ENV,
    )  # fmt: skip
    assert stream.returncode == 0, stream.stderr
    records = [
        json.loads(line)
        for line in (tmp_path / "stream" / "results.jsonl").read_text().splitlines()
    ]
    assert [r["index"] for r in records] == list(range(len(images)))
    assert {r["phase"] for r in records} == {"stream"}
    reference = _scores(tmp_path / "batch")
    np.testing.assert_allclose(
        [r["score"] for r in records], [reference[r["path"]] for r in records], atol=1e-5
    )


def test_the_python_api_predicts_one_image_like_the_cli(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    from PIL import Image

    import zsad as api

    data, artifact = trained
    image = data / "fabric" / "test" / "good" / "000.png"
    cli = zsad(
        "infer", str(image), "--method", "headclip", "--calibration", str(artifact),
        "--model", "zsad-tiny", "--out", str(tmp_path / "cli"), *COMMON,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    expected = _scores(tmp_path / "cli")[str(image)]
    det = api.Detector.from_model(
        "zsad-tiny", method="headclip", calibration=artifact, device="cpu", threshold=expected
    )
    with det:
        from_path = det.predict(image)
        from_pil = det.predict(Image.open(image))
        streamed = det.stream().add(image)
    assert from_path.score == pytest.approx(expected, rel=1e-5)
    assert from_pil.score == pytest.approx(expected, rel=1e-5) and from_pil.path is None
    assert from_path.decision == "OK" and from_path.anomaly_map.shape == (56, 56)
    assert [r.score for r in streamed] == pytest.approx([expected], rel=1e-5)
    record = from_path.to_record()
    assert record["decision"] == "OK" and record["score"] == from_path.score
