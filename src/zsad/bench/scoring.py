"""`zsad bench scoring`: MSM and full-set scoring time and memory versus N and bank size K."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from zsad.arrays import array_module
from zsad.bench import measure as bm
from zsad.bench import plots as bp
from zsad.bench.report import say, write_report
from zsad.errors import ZsadError
from zsad.scoring import mutual_scores
from zsad.scoring.pipeline import SetScoringConfig, score_set

BASELINE = (
    "MuSc-style: full FP32 P x (N-1)P distance matrix per image (NumPy; CuPy for the "
    "gpu_baseline columns)"
)
COLUMNS = [
    "mode",
    "n",
    "bank",
    "window",
    "gflop",
    "numpy_s",
    "numpy_peak_mb",
    "numpy_gflops",
    "fraction_of_matmul",
    "speedup_vs_global",
    "gpu_s",
    "gpu_tflops",
    "gpu_fraction_of_peak",
    "gpu_speedup_vs_global",
    "baseline_s",
    "baseline_peak_mb",
    "speedup_vs_baseline",
    "gpu_baseline_s",
    "gpu_speedup_vs_gpu_baseline",
    "score_set_s",
    "score_set_gpu_s",
    "flag",
]
ABOVE_MATMUL = "faster than the matmul it is held to"
# NumPy MSM rows shorter than LONG_RUN_S: this many rounds of MSM and its matmul, alternating.
ROUNDS = 3
LONG_RUN_S = 60.0
# OpenBLAS's workers spin for a while after a multi-threaded call: an MSM run started at once
# after the matmul would share the cores with them (aligned MSM, whose own threads each run
# one-threaded GEMMs, measured about a third slower so), so each run starts this much later.
SETTLE_S = 0.3


def bench_scoring(
    out: Path,
    *,
    ns: list[int],
    banks: list[int],
    patches: int = 1369,
    channels: int = 1024,
    taps: int = 4,
    memory_mb: float = 64.0,
    max_baseline_mb: float = 2048.0,
    numpy: bool = True,
    seed: int = 0,
    windows: list[int] | None = None,
) -> dict[str, Any]:
    """Time MSM per set size N and bank size K, global and aligned at each of ``windows``
    (--align-window); writes OUT/bench.json, bench.md and plots."""
    if min(ns) < 2:
        raise ZsadError("--n: mutual scoring needs at least 2 images")
    gpu_reason = gpu_scoring_unavailable()
    gpu = gpu_reason is None
    if not (numpy or gpu):
        raise ZsadError(
            f"--no-numpy: nothing left to time, the GPU path is unavailable ({gpu_reason})"
        )
    env = bm.environment("cuda" if gpu else "cpu")
    # MSM multiplies in float16 on the GPU, so that is the peak it is held to.
    gpu_peak = bm.cupy_matmul_peak_tflops("float16") if gpu else None
    shape = (patches, channels, memory_mb)
    devices = (["cpu"] if numpy else []) + (["gpu"] if gpu else [])
    rows: list[dict[str, Any]] = []
    for size in ns:
        feats = bm.unit_features(size, patches, channels, seed)
        row: dict[str, Any] = {"mode": "set", "n": size, "bank": None, "window": None}
        row.update(_msm_row(feats, None, shape, numpy, gpu_peak))
        need = bm.musc_baseline_mb(size, patches)
        row["baseline_matrix_mb"] = round(need, 1)
        if need <= max_baseline_mb:
            row.update(_baseline_columns(feats, row, numpy, gpu))
        for device in devices if taps else []:
            row.update(_score_set_columns(size, taps, shape, seed, device))
        say(f"N {size}: " + _msm_summary(row))
        rows.append(row)
        rows += _aligned_rows(feats, None, row, windows or [], shape, numpy, gpu_peak)
    queries = bm.unit_features(min(ns), patches, channels, seed + 1)
    for k in banks:
        ref = bm.unit_features(k, patches, channels, seed + 2)
        row = {"mode": "bank", "n": len(queries), "bank": k, "window": None}
        row.update(_msm_row(queries, ref, shape, numpy, gpu_peak))
        say(f"bank {k}: " + _msm_summary(row))
        rows.append(row)
        rows += _aligned_rows(queries, ref, row, windows or [], shape, numpy, gpu_peak)
    config = {
        "n": ns,
        "bank": banks,
        "patches": patches,
        "channels": channels,
        "taps": taps,
        "memory_mb": memory_mb,
        "max_baseline_mb": max_baseline_mb,
        "seed": seed,
        "numpy": numpy,
        "align_windows": windows or [],
        "baseline": BASELINE,
        "numpy_msm_timing": f"median of {ROUNDS} rounds alternating with the same-FLOP matmul, "
        f"each MSM run {SETTLE_S} s after it (one traced run for peak memory; runs of "
        f"{LONG_RUN_S:.0f} s or more: that run)",
    }
    body = {
        "gpu": gpu_reason or "available",
        "gpu_matmul_peak_tflops": None if gpu_peak is None else {"float16": gpu_peak},
        "rows": rows,
    }
    md = bm.markdown_table(rows, COLUMNS)
    if any(r.get("flag") for r in rows):
        md += (
            f"\n- flag: a fraction above 1 ({ABOVE_MATMUL}) is not a real fraction: the matmul "
            "ran under other load than MSM, so it understates the device\n"
        )
    return write_report(out, "scoring", env, config, body, md, _plots(out, rows))


def gpu_scoring_unavailable() -> str | None:
    """None when CuPy sees a CUDA device, else why the GPU path is skipped."""
    try:
        xp = array_module("gpu")
    except Exception as exc:  # noqa: BLE001 - any failure means "no GPU path here"
        return str(exc).splitlines()[0]
    return None if xp is not np else "CuPy did not find a CUDA device"


def _aligned_rows(
    feats: np.ndarray,
    bank: np.ndarray | None,
    global_row: dict[str, Any],
    windows: list[int],
    shape: tuple[int, int, float],
    numpy: bool,
    gpu_peak: float | None,
) -> list[dict[str, Any]]:
    """Aligned MSM at each window beside the global row it is compared with."""
    rows = []
    for window in windows:
        row = {k: global_row[k] for k in ("mode", "n", "bank")} | {"window": window}
        row.update(_msm_row(feats, bank, shape, numpy, gpu_peak, window))
        for device, key in (("numpy", "speedup_vs_global"), ("gpu", "gpu_speedup_vs_global")):
            if f"{device}_s" in row and f"{device}_s" in global_row:
                row[key] = round(global_row[f"{device}_s"] / row[f"{device}_s"], 2)
        say(f"  --align-window {window}: " + _msm_summary(row))
        rows.append(row)
    return rows


def _msm_row(
    feats: np.ndarray,
    bank: np.ndarray | None,
    shape: tuple[int, int, float],
    numpy: bool,
    gpu_peak: float | None,
    window: int | None = None,
) -> dict[str, Any]:
    """MSM at one shape: NumPy time, memory and matmul fraction; GPU time against its peak.
    With ``window``, aligned MSM, held to the FLOPs of the pairs inside the window."""
    patches, channels, budget = shape
    n = feats.shape[0]
    n_ref = 0 if bank is None else bank.shape[0]
    flops = bm.msm_flops(n, n_ref, patches, channels, bank is None, window)
    row: dict[str, Any] = {"gflop": round(flops / 1e9, 2)}
    options = {"bank": bank, "memory_budget_mb": budget, "align_window": window}
    if numpy:
        rows = max(patches, int(budget * 2**20) // (patches * 4))

        def run() -> Any:
            return mutual_scores(feats, device="cpu", **options)

        def matmul_seconds() -> float:
            return bm.numpy_matmul_seconds(rows, channels, patches, flops)

        traced_s, peak = bm.traced_peak(run, retime_below_s=0.0)
        # Short runs alternate with the matmul they are held to and report medians; a run of
        # a minute or more is timed once (traced: it makes few allocations for its time).
        if traced_s < LONG_RUN_S:
            seconds, matmul = bm.paired_medians(run, matmul_seconds, ROUNDS, settle_s=SETTLE_S)
        else:
            seconds, matmul = traced_s, matmul_seconds()
        row.update(
            numpy_s=round(seconds, 4),
            numpy_s_per_image=round(seconds / n, 5),
            numpy_peak_mb=peak,
            numpy_gflops=round(flops / seconds / 1e9, 1),
            matmul_same_flops_s=round(matmul, 4),
            fraction_of_matmul=round(matmul / seconds, 3),
        )
    if gpu_peak is not None:
        gpu_s, pool_mb = _gpu_timed(lambda: mutual_scores(feats, device="gpu", **options))
        row.update(
            gpu_s=_sig(gpu_s),
            gpu_s_per_image=_sig(gpu_s / n),
            gpu_pool_mb=pool_mb,
            gpu_tflops=round(flops / gpu_s / 1e12, 2),
            gpu_fraction_of_peak=round(flops / gpu_s / 1e12 / gpu_peak, 3),
        )
        if numpy:
            row["gpu_vs_numpy"] = round(row["numpy_s"] / gpu_s, 2)
    if max(row.get("fraction_of_matmul", 0), row.get("gpu_fraction_of_peak", 0)) > 1:
        row["flag"] = ABOVE_MATMUL
    return row


def _sig(seconds: float) -> float:
    """Four significant digits: GPU times are milliseconds, where fixed decimals lose them."""
    return float(f"{seconds:.4g}")


def _gpu_timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """Seconds of a second host-ending call of ``fn``, and MiB CuPy's pool grew to in the first."""
    import cupy

    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    fn()  # warm-up: kernels compiled, cuBLAS handles made, the pool grown to the call's peak
    # The pool keeps every block it grew to, so what it holds now is the call's peak.
    held_mb = round(pool.total_bytes() / 2**20, 1)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, held_mb


def _baseline_columns(
    feats: np.ndarray, row: dict[str, Any], numpy: bool, gpu: bool
) -> dict[str, Any]:
    """The MuSc-style baseline where MSM ran: NumPy, and CuPy FP32 as MuSc runs it with torch."""
    out: dict[str, Any] = {}
    if numpy:
        seconds, peak = bm.traced_peak(lambda: bm.musc_baseline(feats))
        out.update(
            baseline_s=round(seconds, 4),
            baseline_peak_mb=peak,
            speedup_vs_baseline=round(seconds / row["numpy_s"], 2),
            memory_vs_baseline=round(peak / max(row["numpy_peak_mb"], 1e-3), 2),
        )
    if gpu:
        import cupy

        on_gpu = cupy.asarray(feats)
        seconds, pool_mb = _gpu_timed(lambda: bm.musc_baseline(on_gpu))
        out.update(
            gpu_baseline_s=_sig(seconds),
            gpu_baseline_pool_mb=pool_mb,
            gpu_speedup_vs_gpu_baseline=round(seconds / row["gpu_s"], 2),
        )
    return out


def _score_set_columns(
    n: int, taps: int, shape: tuple[int, int, float], seed: int, device: str
) -> dict[str, Any]:
    """Time the whole STAPS scoring (LNAMD, MSM per (tap, r), BGMPS, STAS) at this shape."""
    patches, channels, budget = shape
    rng = np.random.default_rng(seed)
    tokens = rng.standard_normal((n, taps, patches + 1, channels), dtype=np.float32)
    cls = rng.standard_normal((n, 512), dtype=np.float32)
    config = SetScoringConfig(method="staps", memory_budget_mb=budget, device=device, seed=seed)
    # The raw image score reads the maps at the input size of a /14 ViT with this patch grid.
    image_size = 14 * round(patches**0.5)

    def run() -> Any:
        return score_set(tokens, cls, config, image_size=image_size)

    if device == "gpu":
        seconds, pool_mb = _gpu_timed(run)
        return {"score_set_gpu_s": _sig(seconds), "score_set_gpu_pool_mb": pool_mb}
    seconds, peak = bm.traced_peak(run)
    return {"score_set_s": round(seconds, 4), "score_set_peak_mb": peak}


def _msm_summary(row: dict[str, Any]) -> str:
    parts = []
    if "numpy_s" in row:
        parts.append(f"NumPy {row['numpy_s']} s ({row['fraction_of_matmul']} of matmul)")
    if "gpu_s" in row:
        parts.append(f"GPU {row['gpu_s']} s ({row['gpu_fraction_of_peak']} of fp16 peak)")
    return "MSM " + ", ".join(parts)


def _plots(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    sets = [r for r in rows if r["mode"] == "set" and r["window"] is None]
    banks = [r for r in rows if r["mode"] == "bank" and r["window"] is None]
    labels = {
        "numpy_s": "MSM, NumPy",
        "gpu_s": "MSM, GPU",
        "baseline_s": "MuSc-style baseline",
        "gpu_baseline_s": "MuSc-style baseline, GPU",
        "score_set_s": "full score_set",
        "score_set_gpu_s": "full score_set, GPU",
    }
    versus_n = {
        label: [(r["n"], r[key]) for r in sets if r.get(key) is not None]
        for key, label in labels.items()
    }
    plots = [
        bp.line_chart(
            out / "scoring_vs_n.png",
            versus_n,
            title="Scoring time vs set size N",
            xlabel="N images",
            ylabel="seconds",
            logx=True,
            logy=True,
        )
    ]
    if banks:
        per_image = {"numpy_s_per_image": "MSM, NumPy", "gpu_s_per_image": "MSM, GPU"}
        versus_k = {
            label: [(r["bank"], r[key]) for r in banks if key in r]
            for key, label in per_image.items()
        }
        plots.append(
            bp.line_chart(
                out / "scoring_vs_bank.png",
                versus_k,
                title="Single-image scoring time vs bank size K",
                xlabel="bank size K",
                ylabel="seconds per image",
                logx=True,
            )
        )
    return plots
