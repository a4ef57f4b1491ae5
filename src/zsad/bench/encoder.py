"""`zsad bench encoder`: latency percentiles, images/s, memory and TFLOP/s per backend and batch."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np

from zsad.bench import measure as bm
from zsad.bench import plots as bp
from zsad.bench.backends import (
    bundle_backend,
    check_backends,
    check_device,
    load_clip,
    torch_backend,
)
from zsad.bench.report import resolve_device, say, warn, write_report
from zsad.errors import ZsadError
from zsad.formats.methods import METHODS

MEMORY_NOTE = {
    "cpu": "peak resident memory of the process so far (MiB)",
    "cuda": "GPU memory in use after the row's runs less the bench's own before the first backend "
    "(cudaMemGetInfo, MiB): ONNX Runtime's and TensorRT's allocations and contexts count too",
}
COLUMNS = [
    "backend",
    "batch",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "images_per_s",
    "peak_memory_mb",
    "gflop_per_image",
    "achieved_tflops",
    "fraction_of_peak",
]


def bench_encoder(
    out: Path,
    *,
    backends: list[str],
    batches: list[int],
    model: str = "ViT-L-14-336",
    weights: Path | None = None,
    pretrained: str = "random",
    bundle: Path | None = None,
    image_size: int = 518,
    device: str = "auto",
    warmup: int = 3,
    iters: int = 20,
    min_time: float = 2.0,
) -> dict[str, Any]:
    """Time each backend at each batch size; writes OUT/bench.json, bench.md and two plots."""
    check_backends(backends)
    dev = resolve_device(device)
    env = bm.environment(dev)
    peaks = {"float32": bm.matmul_peak_tflops(dev, "float32")}
    baseline_mb = None
    if dev.startswith("cuda"):
        peaks["float16"] = bm.matmul_peak_tflops(dev, "float16")
        _release_torch_cache(dev)
        baseline_mb = _gpu_memory_in_use_mb(dev)
    rows: list[dict[str, Any]] = []
    unavailable: dict[str, str] = {}
    flop_source: dict[str, str] = {}
    for name in backends:
        try:
            runner, flops, flop_source[name] = _open(
                name, model, weights, pretrained, image_size, dev, bundle
            )
        except ZsadError as exc:
            unavailable[name] = str(exc)
            warn(f"{name}: unavailable: {exc}")
            continue
        peak = peaks.get("float16" if name != "torch-fp32" and "float16" in peaks else "float32")
        timing = (warmup, iters, min_time)
        try:
            for b in batches:
                row = _time_batch(name, runner, b, timing, dev, baseline_mb)
                rows.append(_with_flops(row, flops, peak))
                say(f"{name} batch {b}: p50 {row['p50_ms']} ms, {row['images_per_s']} img/s")
        finally:
            runner.close()  # frees its GPU memory before the next backend is measured
    config = {
        "model": model if any(b.startswith("torch") for b in backends) else None,
        "bundle": str(bundle) if bundle else None,
        "pretrained": pretrained,
        "image_size": image_size,
        "batches": batches,
        "warmup": warmup,
        "iters": iters,
        "min_time_s": min_time,
        "clock": "perf_counter around run(), which returns host arrays (synchronised)",
        "peak_memory_mb": MEMORY_NOTE["cpu" if baseline_mb is None else "cuda"],
    }
    body = {
        "matmul_peak_tflops": peaks,
        "flop_source": flop_source,
        "rows": rows,
        "unavailable": unavailable,
    }
    md = bm.markdown_table(rows, COLUMNS)
    md += "".join(f"\n- {k}: {v}" for k, v in flop_source.items())
    md += "".join(f"\n- {k}: unavailable ({v})" for k, v in unavailable.items())
    return write_report(out, "encoder", env, config, body, md + "\n", _plots(out, rows))


def bundle_flops(bundle: Path) -> tuple[float | None, str]:
    """FLOPs per image from the bundle's FP32 ONNX graph: every bundle backend runs that math."""
    from zsad.formats.bundle import FP32_ONNX

    try:
        return bm.onnx_graph_flops(bundle / FP32_ONNX), f"FLOPs from the {FP32_ONNX} graph"
    except ImportError:
        return None, "flops unavailable: the onnx package is not installed (pip install onnx)"
    except Exception as exc:  # noqa: BLE001 - a missing count must not stop the timing
        return None, f"flops unavailable: {type(exc).__name__}: {str(exc).splitlines()[0]}"


def _open(
    name: str,
    model: str,
    weights: Path | None,
    pretrained: str,
    image_size: int,
    device: str,
    bundle: Path | None,
) -> tuple[Any, float | None, str]:
    """The backend for one --backend name, its FLOPs per image, and their source or absence."""
    check_device(name, device)
    if name.startswith("torch"):
        clip = load_clip(model, weights, pretrained)
        backend = torch_backend(clip, name, image_size, device, METHODS["staps"].outputs)
        flops = bm.encoder_flops(bm.encoder_shape(backend.encoder))["total"]
        return backend, flops, "FLOPs from the encoder config"
    backend = bundle_backend(name, bundle, device)  # explains a missing --bundle
    assert bundle is not None
    return (backend, *bundle_flops(bundle))


def _time_batch(
    name: str,
    runner: Any,
    batch: int,
    timing: tuple[int, int, float],
    device: str,
    baseline_mb: float | None,
) -> dict[str, Any]:
    """Latency percentiles, images/s and memory of one backend at one batch size."""
    warmup, iters, min_time = timing
    _release_torch_cache(device)
    size = runner.image_size
    pixels = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    # run() returns host arrays, so each timed call includes the device sync.
    seconds = bm.time_runs(
        lambda: runner.run(pixels), warmup=warmup, iters=iters, min_seconds=min_time
    )
    stats = bm.percentiles(seconds)
    row: dict[str, Any] = {"backend": name, "runner": runner.name, "batch": batch, **stats}
    row["images_per_s"] = float(f"{batch / (stats['p50_ms'] / 1e3):.4g}")
    if baseline_mb is None:
        memory = bm.peak_rss_mb()
    else:
        memory = _gpu_memory_in_use_mb(device) - baseline_mb
    row["peak_memory_mb"] = round(memory, 1)
    return row


def _with_flops(row: dict[str, Any], flops: float | None, peak: float | None) -> dict[str, Any]:
    """Add GFLOP per image, achieved TFLOP/s and its fraction of the matmul peak."""
    if flops is None:
        return row
    achieved = flops * row["batch"] / (row["p50_ms"] / 1e3) / 1e12
    row["gflop_per_image"] = round(flops / 1e9, 3)
    row["achieved_tflops"] = round(achieved, 4)
    row["matmul_peak_tflops"] = peak
    row["fraction_of_peak"] = round(achieved / peak, 3) if peak else None
    return row


def _gpu_memory_in_use_mb(device: str) -> float:
    """Memory in use on the GPU (total less free), whoever allocated it."""
    import torch

    free, total = torch.cuda.mem_get_info(torch.device(device))
    return (total - free) / 2**20


def _release_torch_cache(device: str) -> None:
    # The caching allocator keeps what earlier rows used; drop it so each row shows its own need.
    if device.startswith("cuda"):
        import torch

        gc.collect()
        torch.cuda.empty_cache()


def _plots(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    if not rows:
        return []
    by_backend: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_backend.setdefault(row["backend"], []).append(row)

    def series(key: str) -> dict[str, list[tuple[float, float]]]:
        return {k: [(r["batch"], r[key]) for r in v] for k, v in by_backend.items()}

    return [
        bp.line_chart(
            out / "latency.png",
            series("p50_ms"),
            title="Encoder latency (p50) vs batch",
            xlabel="batch size",
            ylabel="ms per batch",
            logx=True,
            logy=True,
        ),
        bp.line_chart(
            out / "throughput.png",
            series("images_per_s"),
            title="Encoder throughput vs batch",
            xlabel="batch size",
            ylabel="images / s (at p50)",
            logx=True,
        ),
    ]
