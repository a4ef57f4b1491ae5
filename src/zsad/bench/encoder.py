"""`zsad bench encoder`: latency percentiles, images/s, memory and TFLOP/s per backend and batch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from zsad.bench import measure as bm
from zsad.bench import plots as bp
from zsad.bench.backend_process import MEMORY_METHODS, BackendProcess, release_torch_cache
from zsad.bench.backends import check_backends, check_device
from zsad.bench.report import resolve_device, say, warn, write_report
from zsad.errors import ZsadError

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
    "matmul_peak_tflops",
    "fraction_of_peak",
    "flag",
]
# GEMMs per interleaved peak sample: enough to fill the cores, short beside a row's runs.
PEAK_CALLS = {"cpu": 2, "cuda": 10}
ABOVE_PEAK = "above the matmul peak measured beside it"


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
    rounds: int = 5,
) -> dict[str, Any]:
    """Time each backend at each batch size; writes OUT/bench.json, bench.md and two plots.

    Each backend runs in its own process. Each row's timed runs are split into ``rounds``
    rounds with a matmul peak sample before each and after the last, all in this process while
    the backend's waits, so the row's fraction of peak divides two medians taken under the same
    load.
    """
    check_backends(backends)
    if rounds < 1:
        raise ZsadError(f"--rounds {rounds}: at least 1")
    dev = resolve_device(device)
    env = bm.environment(dev)
    spec = {
        "model": model,
        "weights": None if weights is None else str(weights),
        "pretrained": pretrained,
        "image_size": image_size,
        "device": dev,
        "bundle": None if bundle is None else str(bundle),
    }
    rows: list[dict[str, Any]] = []
    unavailable: dict[str, str] = {}
    flop_source: dict[str, str] = {}
    methods: set[str] = set()
    for name in backends:
        try:
            check_device(name, dev)
            worker = BackendProcess(name, spec)
        except ZsadError as exc:
            unavailable[name] = str(exc)
            warn(f"{name}: unavailable: {exc}")
            continue
        # Engines and torch-fp16 run FP16 math on a GPU: their peak is the FP16 GEMM's.
        dtype = "float16" if dev.startswith("cuda") and name != "torch-fp32" else "float32"
        with worker:  # the child releases its backend and exits before the next is opened
            flop_source[name] = worker.flop_source
            for b in batches:
                row = _row(worker, b, (warmup, iters, min_time, rounds), dev, dtype)
                methods.add(row.pop("memory_method"))
                rows.append(row)
                say(
                    f"{name} batch {b}: p50 {row['p50_ms']} ms, {row['images_per_s']} img/s, "
                    f"{row.get('fraction_of_peak', '-')} of peak"
                )
    config = {
        "model": model if any(b.startswith("torch") for b in backends) else None,
        "bundle": str(bundle) if bundle else None,
        "pretrained": pretrained,
        "image_size": image_size,
        "batches": batches,
        "warmup": warmup,
        "iters": iters,
        "min_time_s": min_time,
        "rounds": rounds,
        "clock": "perf_counter around run(), which returns host arrays (synchronised)",
        "matmul_peak": f"median of {rounds + 1} samples per row ({PEAK_CALLS[_kind(dev)]} square "
        "GEMMs each), one before each round of the row's timed runs and one after the last",
        "peak_memory_mb": "; ".join(MEMORY_METHODS[m] for m in sorted(methods)),
    }
    body = {"flop_source": flop_source, "rows": rows, "unavailable": unavailable}
    md = bm.markdown_table(rows, COLUMNS)
    md += f"\n- peak memory: {config['peak_memory_mb']}"
    md += f"\n- matmul peak: {config['matmul_peak']}"
    md += "".join(f"\n- {k}: {v}" for k, v in flop_source.items())
    md += "".join(f"\n- {k}: unavailable ({v})" for k, v in unavailable.items())
    if any(r.get("flag") for r in rows):
        md += (
            f"\n- flag: a fraction {ABOVE_PEAK} is not a real fraction: the backend ran faster "
            "than the plain GEMM did under the same load, so that peak understates the device "
            "(load changing within a round, or kernels faster than the GEMM)"
        )
    return write_report(out, "encoder", env, config, body, md + "\n", _plots(out, rows))


def _kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def _row(
    worker: BackendProcess,
    batch: int,
    timing: tuple[int, int, float, int],
    device: str,
    dtype: str,
) -> dict[str, Any]:
    """Latency percentiles, images/s, memory and fraction of peak of one backend at one batch."""
    warmup, iters, min_time, rounds = timing
    worker.start_row(batch, warmup)
    peaks: list[float] = []
    seconds: list[float] = []
    for _ in range(rounds):
        peaks.append(_peak_sample(device, dtype))
        seconds += worker.time(math.ceil(iters / rounds), min_time / rounds)
    peaks.append(_peak_sample(device, dtype))
    memory, method = worker.memory()
    stats = bm.percentiles(seconds)
    row: dict[str, Any] = {
        "backend": worker.name,
        "runner": worker.runner_name,
        "batch": batch,
        **stats,
    }
    row["images_per_s"] = float(f"{batch / (stats['p50_ms'] / 1e3):.4g}")
    row["peak_memory_mb"] = memory
    row["memory_method"] = method
    row["matmul_peak_samples_tflops"] = peaks
    return _with_flops(row, worker.flops, float(np.median(peaks)))


def _peak_sample(device: str, dtype: str) -> float:
    """One matmul peak sample, its GPU memory handed back before the backend's next round."""
    peak = bm.matmul_peak_tflops(device, dtype, calls=PEAK_CALLS[_kind(device)])
    release_torch_cache(device)
    return peak


def _with_flops(row: dict[str, Any], flops: float | None, peak: float) -> dict[str, Any]:
    """Add GFLOP per image, achieved TFLOP/s and its fraction of the median matmul peak."""
    row["matmul_peak_tflops"] = float(f"{peak:.4g}")
    if flops is None:
        return row
    achieved = flops * row["batch"] / (row["p50_ms"] / 1e3) / 1e12
    row["gflop_per_image"] = round(flops / 1e9, 3)
    row["achieved_tflops"] = round(achieved, 4)
    row["fraction_of_peak"] = round(achieved / peak, 3) if peak else None
    if peak and achieved > peak:
        row["flag"] = ABOVE_PEAK
    return row


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
