"""`zsad bench`: encoder latency, scoring cost versus N and bank size, end-to-end pipeline."""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from zsad import bench_plots as bp
from zsad import benchmarking as bm
from zsad.cli.common import (
    BundleOpt,
    DeviceOpt,
    ModelOpt,
    SeedOpt,
    WeightsOpt,
)
from zsad.errors import ZsadError
from zsad.runtime.atomic import write_json

bench_app = typer.Typer(
    name="bench",
    help="Benchmarks: each writes OUT/bench.json, OUT/bench.md and PNG plots. Random weights "
    "time like real ones, so no download is needed.",
    no_args_is_help=True,
)

BACKENDS = ("torch-fp32", "torch-fp16", "onnxruntime", "trt", "rtx")
PIPELINE_STAGES = ("decode", "preprocess", "encoder", "scoring", "writing")

OutOpt = Annotated[
    Path, typer.Option("--out", help="Folder for bench.json, bench.md and the PNG plots.")
]
WarmupOpt = Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs first.")]
ItersOpt = Annotated[int, typer.Option("--iters", min=1, help="Timed runs, at least.")]
MinTimeOpt = Annotated[
    float,
    typer.Option("--min-time", min=0.0, help="Keep timing until this many seconds are spent."),
]
BenchImageSizeOpt = Annotated[
    int, typer.Option("--image-size", help="Encoder input size in pixels.")
]
BenchPretrainedOpt = Annotated[
    str,
    typer.Option(
        "--pretrained", help="open_clip tag; 'random' (default) times exactly like real weights."
    ),
]


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ZsadError(f"{option} {text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise ZsadError(f"{option} {text!r}: expected positive integers")
    return values


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _device(device: str) -> str:
    if device == "auto":
        return "cuda" if _cuda_available() else "cpu"
    return device


def _write(
    out: Path,
    command: str,
    env: dict[str, Any],
    config: dict[str, Any],
    body: dict[str, Any],
    md: str,
    plots: list[Path],
) -> None:
    names = [p.name for p in plots]
    write_json(
        out / "bench.json",
        {"command": command, "environment": env, "config": config, **body, "plots": names},
    )
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    header = (
        f"# zsad bench {command}\n\nDevice: {env.get('gpu', env['processor'])} "
        f"({env['cpu_count']} CPU cores); {versions}\n\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    links = "".join(f"\n![{Path(n).stem}]({n})\n" for n in names)
    (out / "bench.md").write_text(header + md + links)


# --------------------------------------------------------------------------- encoder


def _torch_backend(clip: Any, name: str, image_size: int, device: str, outputs: tuple) -> Any:
    """A TorchBackend for torch-fp32 / torch-fp16 over an already loaded CLIP."""
    from zsad.model import DualPathEncoder
    from zsad.model.backend import TorchBackend

    encoder = DualPathEncoder(clip, image_size=image_size, outputs=outputs)
    return TorchBackend(encoder, device=device, fp16=name == "torch-fp16")


def _check_device(backend: str, device: str) -> None:
    """torch-fp16 and the engines run only on a CUDA GPU."""
    if backend in ("torch-fp16", "trt", "rtx") and not device.startswith("cuda"):
        raise ZsadError(f"{backend} needs a CUDA GPU; this run is on {device}")


def _encoder_backend(
    name: str,
    model: str,
    weights: Path | None,
    pretrained: str,
    image_size: int,
    device: str,
    bundle: Path | None,
) -> tuple[Any, float | None, str]:
    """The backend for one --backend name, its FLOPs per image, and their source or absence."""
    _check_device(name, device)
    if name.startswith("torch"):
        from zsad.model import load_clip

        clip = load_clip(model, weights=weights, pretrained=pretrained)
        backend = _torch_backend(clip, name, image_size, device, ("cls", "taps"))
        return (
            backend,
            bm.encoder_flops(bm.encoder_shape(backend.encoder))["total"],
            "FLOPs from the encoder config",
        )
    return (_bundle_backend(name, bundle, device), *_bundle_flops(bundle))


def _bundle_backend(name: str, bundle: Path | None, device: str) -> Any:
    """The bundle's ONNX Runtime session (onnxruntime) or its engine (trt, rtx)."""
    if bundle is None:
        raise ZsadError(f"{name} runs a `zsad export` bundle: pass --bundle DIR")
    from zsad.runtime.bundle import open_backend

    path = bundle / "encoder.engine" if name in ("trt", "rtx") else bundle
    if name in ("trt", "rtx") and not path.exists():
        raise ZsadError(f"{path}: no engine in the bundle (export with --engine {name})")
    return open_backend(path, device=device, image_size=None)


def _bundle_flops(bundle: Path) -> tuple[float | None, str]:
    """FLOPs per image from the bundle's FP32 ONNX graph: every bundle backend runs that math."""
    from zsad.runtime.bundle import FP32_ONNX

    try:
        return bm.onnx_graph_flops(bundle / FP32_ONNX), f"FLOPs from the {FP32_ONNX} graph"
    except ImportError:
        return None, "flops unavailable: the onnx package is not installed (pip install onnx)"
    except Exception as exc:  # noqa: BLE001 - a missing count must not stop the timing
        return None, f"flops unavailable: {type(exc).__name__}: {str(exc).splitlines()[0]}"


MEMORY_NOTE = {
    "cpu": "peak resident memory of the process so far (MiB)",
    "cuda": "GPU memory in use after the row's runs less the bench's own before the first backend "
    "(cudaMemGetInfo, MiB): ONNX Runtime's and TensorRT's allocations and contexts count too",
}


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


def encoder(
    out: OutOpt,
    model: ModelOpt = "ViT-L-14-336",
    weights: WeightsOpt = None,
    pretrained: BenchPretrainedOpt = "random",
    bundle: BundleOpt = None,
    backend: Annotated[
        str, typer.Option("--backend", help=f"Comma-separated: {', '.join(BACKENDS)}.")
    ] = "torch-fp32",
    batch: Annotated[
        str, typer.Option("--batch", help="Comma-separated batch sizes.")
    ] = "1,4,8,16",
    image_size: BenchImageSizeOpt = 518,
    device: DeviceOpt = "auto",
    warmup: WarmupOpt = 3,
    iters: ItersOpt = 20,
    min_time: MinTimeOpt = 2.0,
) -> None:
    """Encoder latency percentiles, images/s, peak memory and achieved TFLOP/s per backend/batch."""
    names = [b.strip() for b in backend.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise ZsadError(f"--backend {','.join(unknown)}: choose from {', '.join(BACKENDS)}")
    batches = _ints(batch, "--batch")
    dev = _device(device)
    env = bm.environment(dev)
    cuda = dev.startswith("cuda")
    peaks = {"float32": bm.matmul_peak_tflops(dev, "float32")}
    if cuda:
        peaks["float16"] = bm.matmul_peak_tflops(dev, "float16")
        _release_torch_cache(dev)
        baseline_mb = _gpu_memory_in_use_mb(dev)
    rows: list[dict[str, Any]] = []
    unavailable: dict[str, str] = {}
    flop_source: dict[str, str] = {}
    for name in names:
        try:
            runner, flops, flop_source[name] = _encoder_backend(
                name, model, weights, pretrained, image_size, dev, bundle
            )
        except ZsadError as exc:
            unavailable[name] = str(exc)
            typer.echo(f"{name}: unavailable: {exc}", err=True)
            continue
        peak = peaks.get("float16" if name != "torch-fp32" and "float16" in peaks else "float32")
        size = runner.image_size
        for b in batches:
            _release_torch_cache(dev)
            pixels = np.random.default_rng(0).standard_normal((b, 3, size, size), dtype=np.float32)
            # run() returns host arrays, so each timed call includes the device sync.
            seconds = bm.time_runs(
                lambda p=pixels, r=runner: r.run(p),
                warmup=warmup,
                iters=iters,
                min_seconds=min_time,
            )
            stats = bm.percentiles(seconds)
            row: dict[str, Any] = {"backend": name, "runner": runner.name, "batch": b, **stats}
            row["images_per_s"] = float(f"{b / (stats['p50_ms'] / 1e3):.4g}")
            memory = _gpu_memory_in_use_mb(dev) - baseline_mb if cuda else bm.peak_rss_mb()
            row["peak_memory_mb"] = round(memory, 1)
            if flops is not None:
                achieved = flops * b / (stats["p50_ms"] / 1e3) / 1e12
                row["gflop_per_image"] = round(flops / 1e9, 3)
                row["achieved_tflops"] = round(achieved, 4)
                row["matmul_peak_tflops"] = peak
                row["fraction_of_peak"] = round(achieved / peak, 3) if peak else None
            typer.echo(f"{name} batch {b}: p50 {stats['p50_ms']} ms, {row['images_per_s']} img/s")
            rows.append(row)
        del runner  # frees its GPU memory before the next backend is measured
    config = {
        "model": model if any(b.startswith("torch") for b in names) else None,
        "bundle": str(bundle) if bundle else None,
        "pretrained": pretrained,
        "image_size": image_size,
        "batches": batches,
        "warmup": warmup,
        "iters": iters,
        "min_time_s": min_time,
        "clock": "perf_counter around run(), which returns host arrays (synchronised)",
        "peak_memory_mb": MEMORY_NOTE["cuda" if cuda else "cpu"],
    }
    body = {
        "matmul_peak_tflops": peaks,
        "flop_source": flop_source,
        "rows": rows,
        "unavailable": unavailable,
    }
    cols = [
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
    md = bm.markdown_table(rows, cols)
    md += "".join(f"\n- {k}: {v}" for k, v in flop_source.items())
    md += "".join(f"\n- {k}: unavailable ({v})" for k, v in unavailable.items())
    _write(out, "encoder", env, config, body, md + "\n", _encoder_plots(out, rows))


def _encoder_plots(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
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


# --------------------------------------------------------------------------- scoring


def _gpu_scoring_available() -> str | None:
    """None when CuPy sees a CUDA device, else why the GPU path is skipped."""
    from zsad.scoring._xp import array_module

    try:
        xp = array_module("gpu")
    except Exception as exc:  # noqa: BLE001 - any failure means "no GPU path here"
        return str(exc).splitlines()[0]
    return None if xp is not np else "CuPy did not find a CUDA device"


def _msm_row(
    feats: np.ndarray,
    bank: np.ndarray | None,
    patches: int,
    channels: int,
    budget: float,
    numpy: bool,
    gpu_peak: float | None,
) -> dict[str, Any]:
    """MSM at one shape: NumPy time, memory and matmul fraction; GPU time against its peak."""
    from zsad.scoring import mutual_scores

    n = feats.shape[0]
    symmetric = bank is None
    flops = bm.msm_flops(n, 0 if bank is None else bank.shape[0], patches, channels, symmetric)
    row: dict[str, Any] = {"gflop": round(flops / 1e9, 2)}
    if numpy:
        seconds, peak = bm.traced_peak(
            lambda: mutual_scores(feats, bank=bank, memory_budget_mb=budget, device="cpu")
        )
        rows = max(patches, int(budget * 2**20) // (patches * 4))
        matmul = bm.numpy_matmul_seconds(rows, channels, patches, flops)
        row.update(
            numpy_s=round(seconds, 4),
            numpy_s_per_image=round(seconds / n, 5),
            numpy_peak_mb=peak,
            numpy_gflops=round(flops / seconds / 1e9, 1),
            matmul_same_flops_s=round(matmul, 4),
            fraction_of_matmul=round(matmul / seconds, 3),
        )
    if gpu_peak is not None:
        gpu_s, pool_mb = _gpu_timed(
            lambda: mutual_scores(feats, bank=bank, memory_budget_mb=budget, device="gpu")
        )
        row.update(
            gpu_s=_sig(gpu_s),
            gpu_s_per_image=_sig(gpu_s / n),
            gpu_pool_mb=pool_mb,
            gpu_tflops=round(flops / gpu_s / 1e12, 2),
            gpu_fraction_of_peak=round(flops / gpu_s / 1e12 / gpu_peak, 3),
        )
        if numpy:
            row["gpu_vs_numpy"] = round(row["numpy_s"] / gpu_s, 2)
    return row


def _sig(seconds: float) -> float:
    """Four significant digits: GPU times are milliseconds, where fixed decimals lose them."""
    return float(f"{seconds:.4g}")


def _gpu_timed(fn: Any) -> tuple[float, float]:
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


def scoring(
    out: OutOpt,
    n: Annotated[str, typer.Option("--n", help="Comma-separated set sizes N.")] = "50,100,200",
    bank: Annotated[
        str | None,
        typer.Option("--bank", help="Comma-separated bank sizes K (single-image scoring)."),
    ] = None,
    patches: Annotated[
        int, typer.Option("--patches", min=1, help="Patches per image (1369 = ViT-L/14 at 518).")
    ] = 1369,
    channels: Annotated[
        int, typer.Option("--channels", min=1, help="Feature channels (1024 = ViT-L).")
    ] = 1024,
    taps: Annotated[
        int, typer.Option("--taps", min=0, help="Taps for the full score_set timing; 0 skips it.")
    ] = 4,
    memory_mb: Annotated[
        float, typer.Option("--memory-mb", help="MSM tile budget (mutual_scores).")
    ] = 64.0,
    max_baseline_mb: Annotated[
        float,
        typer.Option(
            "--max-baseline-mb", help="Skip the MuSc-style baseline above this matrix size."
        ),
    ] = 2048.0,
    numpy: Annotated[
        bool,
        typer.Option(
            "--numpy/--no-numpy",
            help="Also time the NumPy path and the NumPy baseline. On a GPU machine --no-numpy "
            "saves minutes: one map at N=200 and ViT-L shapes is 76 TFLOP.",
        ),
    ] = True,
    seed: SeedOpt = 0,
) -> None:
    """MSM and full-set scoring time and peak memory versus N and bank size, beside baselines."""
    ns = _ints(n, "--n")
    banks = _ints(bank, "--bank") if bank else []
    if min(ns) < 2:
        raise ZsadError("--n: mutual scoring needs at least 2 images")
    gpu_reason = _gpu_scoring_available()
    gpu = gpu_reason is None
    if not (numpy or gpu):
        raise ZsadError(
            f"--no-numpy: nothing left to time, the GPU path is unavailable ({gpu_reason})"
        )
    env = bm.environment("cuda" if gpu else "cpu")
    # MSM multiplies in float16 on the GPU, so that is the peak it is held to.
    gpu_peak = bm.cupy_matmul_peak_tflops("float16") if gpu else None
    devices = (["cpu"] if numpy else []) + (["gpu"] if gpu else [])
    rows: list[dict[str, Any]] = []
    for size in ns:
        feats = bm.unit_features(size, patches, channels, seed)
        row: dict[str, Any] = {"mode": "set", "n": size, "bank": None}
        row.update(_msm_row(feats, None, patches, channels, memory_mb, numpy, gpu_peak))
        need = bm.musc_baseline_mb(size, patches)
        row["baseline_matrix_mb"] = round(need, 1)
        if need <= max_baseline_mb:
            row.update(_baseline_rows(feats, row, numpy, gpu))
        for device in devices if taps else []:
            row.update(_score_set_row(size, taps, patches, channels, memory_mb, seed, device))
        typer.echo(f"N {size}: " + _msm_summary(row))
        rows.append(row)
    queries = bm.unit_features(min(ns), patches, channels, seed + 1)
    for k in banks:
        ref = bm.unit_features(k, patches, channels, seed + 2)
        row = {"mode": "bank", "n": len(queries), "bank": k}
        row.update(_msm_row(queries, ref, patches, channels, memory_mb, numpy, gpu_peak))
        typer.echo(f"bank {k}: " + _msm_summary(row))
        rows.append(row)
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
        "baseline": "MuSc-style: full FP32 P x (N-1)P distance matrix per image (NumPy; CuPy "
        "for the gpu_baseline columns)",
    }
    body = {
        "gpu": gpu_reason or "available",
        "gpu_matmul_peak_tflops": None if gpu_peak is None else {"float16": gpu_peak},
        "rows": rows,
    }
    cols = [
        "mode",
        "n",
        "bank",
        "numpy_s",
        "numpy_peak_mb",
        "numpy_gflops",
        "fraction_of_matmul",
        "gpu_s",
        "gpu_tflops",
        "gpu_fraction_of_peak",
        "baseline_s",
        "baseline_peak_mb",
        "speedup_vs_baseline",
        "gpu_baseline_s",
        "gpu_speedup_vs_gpu_baseline",
        "score_set_s",
        "score_set_gpu_s",
    ]
    md = bm.markdown_table(rows, cols)
    _write(out, "scoring", env, config, body, md, _scoring_plots(out, rows))


def _scoring_plots(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    sets = [r for r in rows if r["mode"] == "set"]
    banks = [r for r in rows if r["mode"] == "bank"]
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


def _msm_summary(row: dict[str, Any]) -> str:
    parts = []
    if "numpy_s" in row:
        parts.append(f"NumPy {row['numpy_s']} s ({row['fraction_of_matmul']} of matmul)")
    if "gpu_s" in row:
        parts.append(f"GPU {row['gpu_s']} s ({row['gpu_fraction_of_peak']} of fp16 peak)")
    return "MSM " + ", ".join(parts)


def _baseline_rows(feats: np.ndarray, row: dict[str, Any], numpy: bool, gpu: bool) -> dict:
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


def _score_set_row(
    n: int,
    taps: int,
    patches: int,
    channels: int,
    budget: float,
    seed: int,
    device: str = "cpu",
) -> dict[str, Any]:
    """Time the whole STAPS scoring (LNAMD, MSM per (tap, r), BGMPS, STAS) at this shape."""
    from zsad.scoring.pipeline import SetScoringConfig, score_set

    rng = np.random.default_rng(seed)
    tokens = rng.standard_normal((n, taps, patches + 1, channels), dtype=np.float32)
    cls = rng.standard_normal((n, 512), dtype=np.float32)
    config = SetScoringConfig(memory_budget_mb=budget, device=device, seed=seed)
    if device == "gpu":
        seconds, pool_mb = _gpu_timed(lambda: score_set(tokens, cls, config))
        return {"score_set_gpu_s": _sig(seconds), "score_set_gpu_pool_mb": pool_mb}
    seconds, peak = bm.traced_peak(lambda: score_set(tokens, cls, config))
    return {"score_set_s": round(seconds, 4), "score_set_peak_mb": peak}


# --------------------------------------------------------------------------- pipeline


def _synthetic_paths(root: Path, count: int, size: int, seed: int) -> list[Path]:
    from zsad.data.synthetic import make_dataset

    make_dataset(
        root, seed=seed, categories=["grid"], n_train=count, n_good=1, n_defect=0, size=size
    )
    return sorted((root / "grid" / "train" / "good").glob("*.png"))[:count]


def _encode(backend: Any, pixels: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    parts = [backend.run(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _stages(backend: Any, paths: list[Path], batch: int, score: Any, out: Path) -> dict[str, float]:
    """Per-stage seconds: decode, preprocess, encoder, scoring, writing."""
    from zsad.data.images import load_image
    from zsad.runtime.preprocess import preprocess_image
    from zsad.runtime.results import image_records

    t: dict[str, float] = {}
    start = time.perf_counter()
    images = [load_image(p) for p in paths]
    t["decode"] = time.perf_counter() - start
    start = time.perf_counter()
    pixels = np.stack(
        [preprocess_image(im, backend.image_size, backend.mean, backend.std) for im in images]
    )
    t["preprocess"] = time.perf_counter() - start
    # Untimed warm-up on a few images: sessions, cuDNN/cuBLAS set-up and CuPy's kernel
    # compilation happen once per process, not per image.
    warm = pixels[: max(2, batch)]
    score(_encode(backend, warm, batch))
    start = time.perf_counter()
    outputs = _encode(backend, pixels, batch)
    t["encoder"] = time.perf_counter() - start
    start = time.perf_counter()
    scores, maps = score(outputs)
    t["scoring"] = time.perf_counter() - start
    start = time.perf_counter()
    image_records(out, paths, paths, scores, maps, [], map_size=backend.image_size)
    t["writing"] = time.perf_counter() - start
    return {k: round(v, 4) for k, v in t.items()}


def pipeline(
    out: OutOpt,
    model: ModelOpt = "ViT-L-14-336",
    weights: WeightsOpt = None,
    pretrained: BenchPretrainedOpt = "random",
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            help=f"One of {', '.join(BACKENDS)}. torch-* build both encoders from --model; the "
            "others run --bundle, which serves one method (the one it was exported for).",
        ),
    ] = "torch-fp32",
    bundle: BundleOpt = None,
    image_size: BenchImageSizeOpt = 518,
    device: DeviceOpt = "auto",
    n: Annotated[int, typer.Option("--n", min=2, help="Images in the STAPS set.")] = 200,
    headclip_n: Annotated[
        int, typer.Option("--headclip-n", min=1, help="Images scored one by one with HeadCLIP.")
    ] = 16,
    headclip_batch: Annotated[
        str, typer.Option("--headclip-batch", help="Comma-separated HeadCLIP batch sizes.")
    ] = "1,8",
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="STAPS encoder batch.")
    ] = 8,
    seed: SeedOpt = 0,
) -> None:
    """End-to-end images/s and per-stage time for staps at N and headclip at each batch size."""
    from zsad.scoring import headclip as hc
    from zsad.scoring._xp import array_module
    from zsad.scoring.pipeline import SetScoringConfig, score_set

    if backend not in BACKENDS:
        raise ZsadError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    batches = _ints(headclip_batch, "--headclip-batch")
    dev = _device(device)
    env = bm.environment(dev)
    encoders = _pipeline_encoders(backend, model, weights, pretrained, image_size, dev, bundle)
    config = SetScoringConfig(seed=seed)
    scoring_device = "cpu" if array_module(config.device) is np else "gpu"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="zsad-bench-") as tmp:
        size = next(iter(encoders.values())).image_size
        count = max(n if "staps" in encoders else 0, headclip_n if "headclip" in encoders else 0)
        paths = _synthetic_paths(Path(tmp) / "data", count, 256, seed)
        if "staps" in encoders:

            def score_staps(o: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
                result = score_set(o["taps"], o["cls"], config)
                return result.image_scores, result.patch_maps

            runner = encoders["staps"]
            stages = _stages(runner, paths[:n], batch_size, score_staps, Path(tmp) / "staps")
            rows.append(_pipeline_row("staps", runner.name, n, batch_size, stages))
        if "headclip" in encoders:
            # Random prompts time exactly like calibrated ones; their width is the CLS width.
            prompts: dict[int, np.ndarray] = {}

            def score_head(o: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
                width = o["cls"].shape[1]
                if width not in prompts:
                    text = np.random.default_rng(seed).standard_normal((2, width))
                    prompts[width] = (text / np.linalg.norm(text, axis=1, keepdims=True)).astype(
                        np.float32
                    )
                return hc.score_headclip(o["cls"], o["local"], prompts[width], image_size=size)

            runner = encoders["headclip"]
            for b in batches:
                folder = Path(tmp) / f"headclip{b}"
                stages = _stages(runner, paths[:headclip_n], b, score_head, folder)
                rows.append(_pipeline_row("headclip", runner.name, headclip_n, b, stages))
    config_out = {
        "backend": backend,
        "model": model if backend.startswith("torch") else None,
        "bundle": None if bundle is None else str(bundle),
        "pretrained": pretrained,
        "image_size": size,
        "n": n,
        "headclip_n": headclip_n,
        "headclip_batch": batches,
        "staps_batch": batch_size,
        "scoring_device": scoring_device,
    }
    cols = ["method", "runner", "images", "batch", "images_per_s", "total_s", *PIPELINE_STAGES]
    md = bm.markdown_table(rows, cols)
    _write(out, "pipeline", env, config_out, {"rows": rows}, md, [_pipeline_plot(out, rows)])


def _pipeline_encoders(
    backend: str,
    model: str,
    weights: Path | None,
    pretrained: str,
    image_size: int,
    device: str,
    bundle: Path | None,
) -> dict[str, Any]:
    """The encoder backend per method: both from one CLIP for torch-*, else the bundle's one."""
    _check_device(backend, device)
    if backend.startswith("torch"):
        from zsad.model import load_clip

        clip = load_clip(model, weights=weights, pretrained=pretrained)
        return {
            "staps": _torch_backend(clip, backend, image_size, device, ("cls", "taps")),
            "headclip": _torch_backend(clip, backend, image_size, device, ("cls", "local")),
        }
    runner = _bundle_backend(backend, bundle, device)
    return {runner.bundle.method: runner}


def _pipeline_plot(out: Path, rows: list[dict[str, Any]]) -> Path:
    bars = {
        f"{r['method']}, {r['images']} images, batch {r['batch']}": {
            stage: r[stage] / r["images"] * 1e3 for stage in PIPELINE_STAGES
        }
        for r in rows
    }
    return bp.stacked_bars(
        out / "stages.png", bars, title="End-to-end time per image by stage", xlabel="ms per image"
    )


def _pipeline_row(
    method: str, runner: str, images: int, batch: int, stages: dict[str, float]
) -> dict[str, Any]:
    total = sum(stages.values())
    typer.echo(f"{method} batch {batch}: {images / total:.2f} img/s")
    return {
        "method": method,
        "runner": runner,
        "images": images,
        "batch": batch,
        "images_per_s": round(images / total, 3),
        "total_s": round(total, 4),
        **stages,
    }


def register(app: typer.Typer) -> None:
    """Attach the bench sub-commands to the app."""
    bench_app.command("encoder")(encoder)
    bench_app.command("scoring")(scoring)
    bench_app.command("pipeline")(pipeline)
    app.add_typer(bench_app, name="bench")
