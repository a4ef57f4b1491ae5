"""zsad bench: each command runs on CPU with tiny shapes and writes well-formed JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from zsad import benchmarking as bm
from zsad.cli.app import _register, app

_register()
runner = CliRunner()


def _bench(tmp_path: Path, *args: str) -> dict:
    result = runner.invoke(app, ["bench", *args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bench.md").read_text().startswith("# zsad bench")
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {"command", "environment", "config", "rows"} <= set(data)
    assert "versions" in data["environment"]
    return data


def test_bench_scoring(tmp_path: Path) -> None:
    data = _bench(
        tmp_path,
        "scoring",
        "--n",
        "3,4",
        "--bank",
        "2",
        "--patches",
        "16",
        "--channels",
        "8",
        "--taps",
        "1",
    )
    sets = [r for r in data["rows"] if r["mode"] == "set"]
    assert [r["n"] for r in sets] == [3, 4]
    for key in ("numpy_s", "numpy_peak_mb", "fraction_of_matmul", "baseline_s", "score_set_s"):
        assert key in sets[0]
    assert [r["bank"] for r in data["rows"] if r["mode"] == "bank"] == [2]


def test_bench_encoder_reports_unavailable_backends(tmp_path: Path) -> None:
    data = _bench(
        tmp_path,
        "encoder",
        "--model",
        "zsad-tiny",
        "--image-size",
        "56",
        "--batch",
        "1,2",
        "--backend",
        "torch-fp32,torch-fp16",
        "--device",
        "cpu",
        "--warmup",
        "1",
        "--iters",
        "2",
        "--min-time",
        "0",
    )
    assert [r["batch"] for r in data["rows"]] == [1, 2]
    row = data["rows"][0]
    for key in ("p50_ms", "p90_ms", "p99_ms", "images_per_s", "peak_memory_mb", "achieved_tflops"):
        assert key in row
    assert "torch-fp16" in data["unavailable"]


def test_bench_pipeline(tmp_path: Path) -> None:
    data = _bench(
        tmp_path,
        "pipeline",
        "--model",
        "zsad-tiny",
        "--image-size",
        "56",
        "--device",
        "cpu",
        "--n",
        "4",
        "--headclip-n",
        "2",
        "--headclip-batch",
        "1,2",
    )
    assert [(r["method"], r["batch"]) for r in data["rows"]][1:] == [
        ("headclip", 1),
        ("headclip", 2),
    ]
    for stage in ("decode", "preprocess", "encoder", "scoring", "writing", "images_per_s"):
        assert stage in data["rows"][0]


def test_musc_baseline_matches_mutual_scores() -> None:
    from zsad.scoring import mutual_scores

    feats = bm.unit_features(5, 12, 8)
    np.testing.assert_allclose(
        bm.musc_baseline(feats), mutual_scores(feats, device="cpu"), atol=1e-4
    )


def test_vit_l_flops_from_config() -> None:
    shape = bm.EncoderShape(1024, 4096, 14, 37, 24, 0, 768)
    assert abs(bm.encoder_flops(shape)["total"] / 1e12 - 1.01) < 0.01
