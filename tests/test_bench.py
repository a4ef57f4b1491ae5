"""zsad bench: each command runs on CPU with tiny shapes and writes well-formed JSON and PNGs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageChops
from typer.testing import CliRunner

from zsad.bench import measure as bm
from zsad.bench import plots as bp
from zsad.bench.backend_process import bundle_flops
from zsad.cli.app import app

runner = CliRunner()


def _bench(tmp_path: Path, *args: str, plots: list[str], optional: tuple[str, ...] = ()) -> dict:
    """Run a bench command; it must draw ``plots``, in order, and may add the ``optional``."""
    result = runner.invoke(app, ["bench", *args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "bench.md").read_text()
    assert md.startswith("# zsad bench")
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {"command", "environment", "config", "rows"} <= set(data)
    assert "versions" in data["environment"]
    assert [name for name in data["plots"] if name not in optional] == plots
    for name in data["plots"]:
        assert f"]({name})" in md
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"
            assert image.size == (bp.WIDTH, bp.HEIGHT)
            # Title, frame, ticks, legend and at least one data colour, not a blank page.
            assert len(image.convert("RGB").getcolors(bp.WIDTH * bp.HEIGHT)) > 10
    return data


@pytest.mark.slow
def test_bench_scoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zsad.bench.scoring import ROUNDS

    # A matmul slower than MSM on the first row only: that row is flagged, the others are not.
    slow = iter([1e3] * ROUNDS)
    plain = bm.numpy_matmul_seconds
    monkeypatch.setattr(
        bm, "numpy_matmul_seconds", lambda *a, **k: next(slow, None) or plain(*a, **k)
    )
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
        plots=["scoring_vs_n.png", "scoring_vs_bank.png"],
    )
    sets = [r for r in data["rows"] if r["mode"] == "set"]
    assert sets[0]["fraction_of_matmul"] > 1 and sets[0]["flag"]
    assert all(r["fraction_of_matmul"] > 1 or "flag" not in r for r in data["rows"][1:])
    assert "not a real fraction" in (tmp_path / "bench.md").read_text()
    assert [r["n"] for r in sets] == [3, 4]
    for key in ("numpy_s", "numpy_peak_mb", "fraction_of_matmul", "baseline_s", "score_set_s"):
        assert key in sets[0]
    assert [r["bank"] for r in data["rows"] if r["mode"] == "bank"] == [2]


def test_traced_peak_times_an_untraced_second_call_of_a_short_run() -> None:
    import tracemalloc

    traced = []

    def run() -> None:
        traced.append(tracemalloc.is_tracing())
        np.ones(2**18)  # 2 MiB

    seconds, peak = bm.traced_peak(run)
    assert traced == [True, False] and peak >= 2 and seconds >= 0
    # A run longer than the limit is timed where it was traced, not run twice.
    traced.clear()
    bm.traced_peak(run, retime_below_s=0.0)
    assert traced == [True]


def test_paired_medians_alternate_the_run_with_its_reference() -> None:
    calls: list[str] = []
    reported = iter([5.0, 1.0, 3.0])

    def reference() -> float:
        calls.append("matmul")
        return next(reported)

    seconds, held_to = bm.paired_medians(lambda: calls.append("msm"), reference, 3)
    assert calls == ["msm", "matmul"] * 3
    assert held_to == 3.0 and seconds >= 0


def test_bench_scoring_times_msm_in_rounds_beside_its_matmul(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zsad.bench.scoring

    calls: list[str] = []
    msm, matmul = zsad.bench.scoring.mutual_scores, bm.numpy_matmul_seconds

    def spy_msm(*args: Any, **kwargs: Any) -> Any:
        calls.append("msm")
        return msm(*args, **kwargs)

    def spy_matmul(*args: Any, **kwargs: Any) -> float:
        calls.append("matmul")
        return matmul(*args, **kwargs)

    monkeypatch.setattr(zsad.bench.scoring, "mutual_scores", spy_msm)
    monkeypatch.setattr(bm, "numpy_matmul_seconds", spy_matmul)
    from zsad.bench.scoring import ROUNDS, bench_scoring

    bench_scoring(tmp_path, ns=[3], banks=[], patches=16, channels=8, taps=0, max_baseline_mb=0)
    # One traced run for the peak, then MSM and its matmul alternating.
    assert calls == ["msm"] + ["msm", "matmul"] * ROUNDS


@pytest.mark.slow
def test_bench_scoring_aligned_rows_beside_global(tmp_path: Path) -> None:
    args = ["scoring", "--n", "4", "--bank", "3", "--patches", "49", "--channels", "8"]
    plots = ["scoring_vs_n.png", "scoring_vs_bank.png"]
    data = _bench(tmp_path, *args, "--taps", "0", "--align-window", "1,2", plots=plots)
    rows = [(r["mode"], r["window"]) for r in data["rows"]]
    assert rows == [("set", None), ("set", 1), ("set", 2), ("bank", None), ("bank", 1), ("bank", 2)]
    by_key = {(r["mode"], r["window"]): r for r in data["rows"]}
    for mode in ("set", "bank"):
        for window in (1, 2):
            row = by_key[mode, window]
            assert {"numpy_s", "numpy_peak_mb", "fraction_of_matmul", "speedup_vs_global"} <= set(
                row
            )
    # Useful FLOPs: the patch pairs within the window (7 x 7 grid: 19^2 and 29^2 of 49^2).
    assert bm.window_pairs(49, 1) == 19**2 and bm.window_pairs(49, 2) == 29**2
    assert bm.window_pairs(49, None) == bm.window_pairs(49, 6) == 49**2


@pytest.mark.slow
@pytest.mark.parametrize("numpy_path", ["--numpy", "--no-numpy"])
def test_bench_scoring_gpu_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, numpy_as_gpu, numpy_path: str
) -> None:
    """With CuPy present the GPU MSM, the GPU baseline and GPU score_set are timed and compared."""
    monkeypatch.setitem(sys.modules, "cupy", numpy_as_gpu)
    # A stand-in peak: an 8192^2 GEMM in NumPy float16 would take minutes.
    monkeypatch.setattr(bm, "cupy_matmul_peak_tflops", lambda dtype: 0.5)
    args = ["--n", "3", "--bank", "2", "--patches", "16", "--channels", "8", "--taps", "1"]
    plots = ["scoring_vs_n.png", "scoring_vs_bank.png"]
    data = _bench(tmp_path, "scoring", *args, numpy_path, plots=plots)
    assert data["environment"]["gpu"] == "Stand-in GPU"
    assert data["gpu_matmul_peak_tflops"] == {"float16": 0.5}
    row, bank_row = data["rows"]
    # The speedup is rounded to 2 decimals, the times to significant digits.
    assert row["gpu_speedup_vs_gpu_baseline"] == pytest.approx(
        row["gpu_baseline_s"] / row["gpu_s"], rel=0.02, abs=0.01
    )
    assert row["gpu_fraction_of_peak"] == pytest.approx(row["gpu_tflops"] / 0.5, abs=2e-3)
    for key in ("gpu_pool_mb", "score_set_gpu_s"):
        assert key in row
    assert "gpu_s_per_image" in bank_row
    numpy_keys = {"numpy_s", "baseline_s", "score_set_s", "gpu_vs_numpy"}
    assert (numpy_keys <= set(row)) == (numpy_path == "--numpy")
    assert numpy_keys.isdisjoint(row) == (numpy_path == "--no-numpy")


@pytest.mark.slow
def test_bench_encoder_reports_unavailable_backends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A peak far below anything the encoder reaches: every row must be flagged, not reported
    # as a plain fraction above 1.
    samples = iter(np.linspace(1e-9, 2e-9, 100))
    monkeypatch.setattr(bm, "matmul_peak_tflops", lambda *a, **k: float(next(samples)))
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
        "torch-fp32,torch-fp16,onnxruntime",
        "--device",
        "cpu",
        "--warmup",
        "1",
        "--iters",
        "2",
        "--min-time",
        "0",
        plots=["latency.png", "throughput.png"],
    )
    assert [r["batch"] for r in data["rows"]] == [1, 2]
    row = data["rows"][0]
    for key in ("p50_ms", "p90_ms", "p99_ms", "images_per_s", "peak_memory_mb", "achieved_tflops"):
        assert key in row
    assert "torch-fp16" in data["unavailable"]
    # Refused inside its own process, the reason still comes back as one line.
    assert data["unavailable"]["onnxruntime"].endswith("pass --bundle DIR")
    # Peaks are sampled beside each row (before each of 5 rounds and after the last): medians.
    first, second = (r["matmul_peak_samples_tflops"] for r in data["rows"])
    assert len(first) == len(second) == 6 and max(first) < min(second)
    assert row["matmul_peak_tflops"] == pytest.approx(np.median(first), rel=1e-3)
    assert all(r["fraction_of_peak"] > 1 and r["flag"] for r in data["rows"])
    md = (tmp_path / "bench.md").read_text()
    assert "above the matmul peak measured beside it" in md
    assert data["environment"]["instruction_set"]
    assert len(data["environment"]["load_average_at_end"]) == 3


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
        plots=["stages.png"],
    )
    assert [(r["method"], r["batch"], r["runner"]) for r in data["rows"]] == [
        ("staps", 8, "torch-fp32-cpu"),
        ("headclip", 1, "torch-fp32-cpu"),
        ("headclip", 2, "torch-fp32-cpu"),
    ]
    for stage in ("decode", "preprocess", "encoder", "scoring", "writing", "images_per_s"):
        assert stage in data["rows"][0]
    assert data["config"]["scoring_device"] == "cpu"


def test_bench_pipeline_runs_the_method_a_bundle_serves(tmp_path: Path, bundle: Path) -> None:
    args = ["pipeline", "--backend", "onnxruntime", "--device", "cpu", "--n", "3"]
    data = _bench(tmp_path, *args, "--bundle", str(bundle), plots=["stages.png"])
    assert [(r["method"], r["runner"]) for r in data["rows"]] == [("staps", "onnxruntime-fp32-cpu")]
    meta = json.loads((bundle / "bundle.json").read_text())
    assert data["config"]["image_size"] == meta["image_size"]
    missing = runner.invoke(app, ["bench", *args, "--out", str(tmp_path / "none")])
    assert missing.exit_code != 0 and "--bundle DIR" in str(missing.exception)


def test_musc_baseline_matches_mutual_scores() -> None:
    from zsad.scoring import mutual_scores

    feats = bm.unit_features(5, 12, 8)
    np.testing.assert_allclose(
        bm.musc_baseline(feats), mutual_scores(feats, device="cpu"), atol=1e-4
    )


def test_vit_l_flops_from_config() -> None:
    shape = bm.EncoderShape(1024, 4096, 14, 37, 24, 0, 768)
    assert abs(bm.encoder_flops(shape)["total"] / 1e12 - 1.01) < 0.01


@pytest.mark.slow
def test_bench_encoder_counts_bundle_flops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "bundle"
    args = ["--model", "zsad-tiny", "--image-size", "56"]
    result = runner.invoke(app, ["export", *args, "--method", "staps", "--out", str(bundle)])
    assert result.exit_code == 0, result.output
    data = _bench(
        tmp_path / "bench",
        "encoder",
        *args,
        "--bundle",
        str(bundle),
        "--backend",
        "torch-fp32,onnxruntime",
        "--batch",
        "1",
        "--device",
        "cpu",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--min-time",
        "0",
        plots=["latency.png", "throughput.png"],
    )
    torch_row, ort_row = data["rows"]
    assert ort_row["backend"] == "onnxruntime"
    # The graph count adds only the CLS projection to what the config formula counts.
    assert ort_row["gflop_per_image"] == pytest.approx(torch_row["gflop_per_image"], rel=1e-3)
    assert ort_row["achieved_tflops"] > 0
    assert "encoder.onnx graph" in data["flop_source"]["onnxruntime"]
    # Each backend in its own process: ONNX Runtime's row does not carry torch's memory.
    assert "own process" in data["config"]["peak_memory_mb"]
    assert 0 < ort_row["peak_memory_mb"] < torch_row["peak_memory_mb"] - 100

    monkeypatch.setitem(sys.modules, "onnx", None)  # a runtime-only install
    flops, reason = bundle_flops(bundle)
    assert flops is None and "onnx package is not installed" in reason


def _chart(path: Path, ys: list[float]) -> Image.Image:
    series = {"a": list(zip([1, 2, 4], ys, strict=True)), "b": [(1, 1.0), (4, 2.0)]}
    bp.line_chart(path, series, title="t", xlabel="x", ylabel="y", logx=True)
    return Image.open(path).convert("RGB")


def test_line_chart_draws_the_data(tmp_path: Path) -> None:
    first = _chart(tmp_path / "1.png", [1.0, 3.0, 2.0])
    same = _chart(tmp_path / "2.png", [1.0, 3.0, 2.0])
    other = _chart(tmp_path / "3.png", [2.0, 1.0, 3.0])
    assert ImageChops.difference(first, same).getbbox() is None
    assert ImageChops.difference(first, other).getbbox() is not None
    colours = {c for _, c in first.getcolors(bp.WIDTH * bp.HEIGHT)}
    assert {bp.PALETTE[0], bp.PALETTE[1]} <= colours


def test_stacked_bars_segments_scale_with_values(tmp_path: Path) -> None:
    bp.stacked_bars(
        tmp_path / "bars.png", {"run": {"small": 1.0, "large": 3.0}}, title="t", xlabel="ms"
    )
    counts = {c: n for n, c in Image.open(tmp_path / "bars.png").convert("RGB").getcolors(10**6)}
    # The legend swatches are equal; the bars differ three-fold.
    assert counts[bp.PALETTE[1]] > 2 * counts[bp.PALETTE[0]]


def test_bench_scoring_without_numpy_needs_the_gpu(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # no CuPy, whatever this machine has
    result = runner.invoke(app, ["bench", "scoring", "--no-numpy", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "nothing left to time" in str(result.exception)
    assert not (tmp_path / "bench.json").exists()


def test_bench_station_samples_the_gpu_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundle: Path, numpy_as_gpu
) -> None:
    """A bank on the GPU is invisible to RSS, so the station bench samples CuPy's pool too."""
    monkeypatch.setitem(sys.modules, "cupy", numpy_as_gpu)
    args = ["--bundle", str(bundle), "--frames", "16", "--bank", "4", "--device", "cpu"]
    result = runner.invoke(app, ["bench", "station", *args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["gpu_pool_mb_end"] == 3.0
    assert data["gpu_pool_growth_mb_per_1000_images"] in (None, 0.0)
    assert {s["gpu_pool_mb"] for s in data["samples"]} == {3.0}
    assert "GPU pool (CuPy" in (tmp_path / "bench.md").read_text()


def test_instruction_set_is_read_from_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f amx_tile\n")
    assert bm.cpu_instruction_set(x86) == "sse4_2 avx avx2 fma avx512f amx_tile"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16\n")
    assert bm.cpu_instruction_set(arm) == "asimd sve bf16"
    assert bm.cpu_instruction_set(tmp_path / "missing").startswith("unknown")


def _fake_infer(command: list[str], log: Path, results: Path) -> Any:
    """Stands in for one `zsad infer` process: a summary.json, 2 ms and 100 MB (+1 KB) per image."""
    from zsad.bench.scale import ChildRun

    n = len(Path(command[command.index("infer") + 1]).read_text().splitlines())
    out = Path(command[command.index("--out") + 1])
    log.write_text(" ".join(command))
    timing = {"encode_s": 0.001 * n, "score_s": 0.001 * n}
    summary = {"images": n, "subsets": -(-n // 5), "timing": timing}
    (out / "summary.json").write_text(json.dumps(summary))
    return ChildRun(0, 0.002 * n + 0.5, 100 + n / 1024, [(0.5, 0, 100.0), (1.0, n, 100.0)])


def test_bench_scale_tabulates_each_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zsad.bench import scale

    monkeypatch.setattr(scale, "measure_child", _fake_infer)
    pool = tmp_path / "pool"
    args = ["scale", "--n", "10,20", "--subset-size", "5", "--image-size", "28"]
    plots = ["memory_vs_n.png", "time_vs_n.png", "rss_over_run.png"]
    data = _bench(tmp_path / "a", *args, "--data", str(pool), "--config", "x=--method staps",
                  plots=plots)  # fmt: skip
    assert [(r["config"], r["n"], r["subsets"]) for r in data["rows"]] == [
        ("x", 10, 2),
        ("x", 20, 4),
    ]
    assert data["verdict"]["x"]["peak_rss_spread"] == round(
        (100 + 20 / 1024) / (100 + 10 / 1024), 3
    )
    assert data["rows"][1]["images_per_s"] == round(20 / 0.54, 2)
    command = (tmp_path / "a" / "runs" / "x-20" / "infer.log").read_text()
    assert "--subset-size 5 --no-overlays" in command and command.endswith("--method staps")
    assert "--image-size 28" in command
    # The pool of the largest N serves the smaller as its prefix, and is kept for the next run.
    assert sorted(p.name for p in pool.glob("*.png")) == [f"{i:06d}.png" for i in range(20)]
    md = (tmp_path / "a" / "bench.md").read_text()
    assert "| x | 20 | 4 |" in md and "- x: peak RSS max/min over N" in md
    bad = runner.invoke(app, ["bench", *args, "--out", str(tmp_path / "b"), "--config", "=-x"])
    assert bad.exit_code != 0 and "NAME=ARGS" in str(bad.exception)


@pytest.mark.slow
def test_bench_scale_peak_memory_is_flat(tmp_path: Path, bundle: Path) -> None:
    args = ["scale", "--n", "60,240", "--subset-size", "20", "--bundle", str(bundle)]
    plots = ["memory_vs_n.png", "time_vs_n.png"]
    # RSS is sampled once a second: a run over sooner than two samples draws no curve.
    data = _bench(tmp_path, *args, "--device", "cpu", plots=plots, optional=("rss_over_run.png",))
    assert [(r["n"], r["subsets"]) for r in data["rows"]] == [(60, 3), (240, 12)]
    # About 180 MB each: 5 % would be 9 MB, far more than 180 more images' metadata.
    assert data["verdict"]["local"]["peak_rss_spread"] < 1.05
