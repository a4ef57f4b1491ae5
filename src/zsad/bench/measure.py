"""Measurement helpers for `zsad bench`: percentiles, FLOP counts, matmul peaks, MSM baselines.

Torch is imported only where a GPU clock or a torch matmul is asked for, so the scoring
benchmarks run on a station with only the runtime installed.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zsad.arrays import module_of, to_numpy


@dataclass(frozen=True)
class EncoderShape:
    """What the FLOP count of a ViT image tower depends on."""

    width: int
    mlp_width: int
    patch_size: int
    grid: int
    layers_run: int
    csa_layers: int  # 0 when the local (CSA) path is not computed
    embed_dim: int
    readouts: int = 1  # local-path read-out blocks, each projected with ln_post + proj


def encoder_shape(encoder: Any) -> EncoderShape:
    """Read the shape of a DualPathEncoder or TapEncoder (torch module) for `encoder_flops`."""
    arch = getattr(encoder, "arch", None)
    if arch is not None:  # a DINO TapEncoder: no CSA path, SwiGLU counted as its matmuls
        mlp = arch.mlp_hidden * (3 if arch.ffn == "swiglu" else 2) // 2
        return EncoderShape(
            width=arch.width,
            mlp_width=mlp,
            patch_size=arch.patch_size,
            grid=int(encoder.grid),
            layers_run=int(encoder.n_run),
            csa_layers=0,
            embed_dim=arch.width,
        )
    block = encoder.blocks[0]
    return EncoderShape(
        width=int(encoder.conv1.out_channels),
        mlp_width=int(block.mlp.c_fc.out_features),
        patch_size=int(encoder.patch_size),
        grid=int(encoder.grid),
        layers_run=int(encoder.n_run),
        csa_layers=len(encoder.csa_layers) if "local" in encoder.outputs else 0,
        embed_dim=int(encoder.proj.shape[1])
        if encoder.proj is not None
        else int(block.ln_1.weight.numel()),
        readouts=len(encoder.local_path.readout_layers),
    )


def encoder_flops(shape: EncoderShape) -> dict[str, float]:
    """FLOPs per image (a multiply-add is 2): patch embedding, the blocks run, the CSA path."""
    d, m, t = shape.width, shape.mlp_width, shape.grid**2 + 1
    embed = 2.0 * (t - 1) * 3 * shape.patch_size**2 * d
    # qkv + out projections, QK^T and AV, then the two MLP matmuls.
    block = 2.0 * t * d * 3 * d + 2.0 * t * d * d + 4.0 * t * t * d + 4.0 * t * d * m
    # CSA per layer: the V projection, V V^T and A V, the out projection; then ln_post + proj
    # per read-out.
    csa = shape.csa_layers * (4.0 * t * d * d + 4.0 * t * t * d)
    if shape.csa_layers:
        csa += shape.readouts * 2.0 * t * d * shape.embed_dim
    tower = embed + shape.layers_run * block
    return {"tower": tower, "csa": csa, "total": tower + csa}


def onnx_graph_flops(path: Path) -> float:
    """FLOPs per image of an ONNX graph's Conv, MatMul and Gemm nodes (a multiply-add is 2).

    Shapes come from ONNX shape inference with the batch fixed to 1. Needs the `onnx`
    package (ImportError otherwise); ValueError when a shape cannot be inferred.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    # Shapes need no weight values; dropping them keeps a ViT-L graph from being copied twice.
    for init in model.graph.initializer:
        if len(init.dims) >= 2:
            init.ClearField("raw_data")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    graph = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    shapes: dict[str, list[int | None]] = {
        v.name: [
            d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
        ]
        for v in (*graph.value_info, *graph.input, *graph.output)
    }
    shapes.update({init.name: list(init.dims) for init in graph.initializer})
    total = 0.0
    for node in graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        a, b, out = (shapes.get(name) for name in (*node.input[:2], node.output[0]))
        if not (a and b and out) or None in (*a, *b, *out):
            raise ValueError(f"{node.op_type} node {node.name!r}: shape not inferred")
        if node.op_type == "Conv":
            inner = math.prod(b[1:])  # input channels per group x kernel area
        elif node.op_type == "Gemm":
            trans_a = any(att.name == "transA" and att.i for att in node.attribute)
            inner = a[0] if trans_a else a[1]
        else:
            inner = a[-1]
        total += 2.0 * math.prod(out) * inner
    return total


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds of a list of run times."""
    ms = np.asarray(seconds, np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "p50_ms": round(float(p50), 3),
        "p90_ms": round(float(p90), 3),
        "p99_ms": round(float(p99), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "runs": len(seconds),
    }


def time_runs(
    fn: Callable[[], Any], *, warmup: int, iters: int, min_seconds: float = 0.0
) -> list[float]:
    """Run `fn` warmup times untimed, then at least `iters` times and `min_seconds` in all."""
    for _ in range(warmup):
        fn()
    seconds: list[float] = []
    total = 0.0
    while len(seconds) < iters or total < min_seconds:
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
        total += seconds[-1]
    return seconds


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (MiB); CPU runs report this as peak memory."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def paired_medians(
    fn: Callable[[], Any], reference: Callable[[], float], rounds: int, *, settle_s: float = 0.0
) -> tuple[float, float]:
    """(median seconds of ``fn``, median of the seconds ``reference()`` reports), the two taken
    in alternating rounds so that both see the same load on the machine; each ``fn`` run starts
    ``settle_s`` after what ran before it."""
    own, held_to = [], []
    for _ in range(rounds):
        time.sleep(settle_s)
        start = time.perf_counter()
        fn()
        own.append(time.perf_counter() - start)
        held_to.append(reference())
    return float(np.median(own)), float(np.median(held_to))


def traced_peak(fn: Callable[[], Any], *, retime_below_s: float = 60.0) -> tuple[float, float]:
    """(seconds, peak MiB of NumPy/Python allocations) of `fn`: the peak from a traced call;
    the seconds from a second, untraced call when the first took under ``retime_below_s``
    (tracemalloc hooks every allocation, which slows a kernel of many small steps by a third
    or more), else from the traced call (a long run makes few allocations for its time)."""
    tracemalloc.start()
    try:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    if seconds < retime_below_s:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return seconds, round(peak / 2**20, 1)


def numpy_matmul_seconds(
    rows: int, inner: int, cols: int, flops: float, *, max_calls: int = 1000
) -> float:
    """Seconds a plain float32 (rows, inner) @ (inner, cols) GEMM takes to do `flops`."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((rows, inner), dtype=np.float32)
    b = rng.standard_normal((inner, cols), dtype=np.float32)
    out = np.empty((rows, cols), np.float32)
    np.matmul(a, b, out=out)  # warm-up: first-touch pages, BLAS thread start
    per_call = 2.0 * rows * inner * cols
    calls = int(min(max_calls, max(1, round(flops / per_call))))
    start = time.perf_counter()
    for _ in range(calls):
        np.matmul(a, b, out=out)
    return (time.perf_counter() - start) * flops / (per_call * calls)


def matmul_peak_tflops(
    device: str, dtype: str = "float32", size: int = 2048, calls: int = 5
) -> float:
    """Measured square-GEMM throughput (TFLOP/s) on this device: NumPy on CPU, torch on CUDA."""
    flops = 2.0 * size**3
    if device == "cpu":
        seconds = numpy_matmul_seconds(size, size, size, calls * flops)
        return round(calls * flops / seconds / 1e12, 4)
    from zsad.model.cuda import matmul_peak_tflops as cuda_peak  # torch: a CUDA bench only

    return cuda_peak(device, dtype, max(size, 8192), calls)


def cupy_matmul_peak_tflops(dtype: str = "float16", size: int = 8192) -> float:
    """Measured square-GEMM throughput (TFLOP/s) of CuPy (cuBLAS) on the current GPU."""
    import cupy

    rng = cupy.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32).astype(dtype)
    b = rng.standard_normal((size, size), dtype=np.float32).astype(dtype)
    out = cupy.empty_like(a)
    for _ in range(3):
        cupy.matmul(a, b, out=out)
    device = cupy.cuda.Device()
    device.synchronize()
    iters = 20
    start = time.perf_counter()
    for _ in range(iters):
        cupy.matmul(a, b, out=out)
    device.synchronize()
    return round(2.0 * size**3 * iters / (time.perf_counter() - start) / 1e12, 2)


def unit_features(n: int, patches: int, channels: int, seed: int = 0) -> np.ndarray:
    """Random unit vectors (n, patches, channels) float32: MSM's cost does not depend on values."""
    x = np.random.default_rng(seed).standard_normal((n, patches, channels), dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def msm_flops(
    n_query: int,
    n_ref: int,
    patches: int,
    channels: int,
    symmetric: bool,
    window: int | None = None,
) -> float:
    """Useful GEMM FLOPs of mutual scoring: each image pair once when symmetric, else every pair;
    with ``window`` (aligned MSM), only the patch pairs within it on a square grid."""
    pairs = n_query * (n_query - 1) / 2 if symmetric else n_query * n_ref
    return 2.0 * pairs * window_pairs(patches, window) * channels


def window_pairs(patches: int, window: int | None) -> int:
    """Ordered patch pairs of one image pair that MSM compares: all, or those within ``window``
    grid cells of each other (Chebyshev) on a square grid."""
    if window is None:
        return patches * patches
    side = int(round(np.sqrt(patches)))
    reach = np.arange(side)
    # Cells within the window along one axis, per position; a 2-D window is their product.
    per_axis = np.minimum(reach + window, side - 1) - np.maximum(reach - window, 0) + 1
    return int(per_axis.sum()) ** 2


def musc_baseline_mb(n: int, patches: int) -> float:
    """Size (MiB) of the per-image float32 distance matrix the MuSc-style baseline allocates."""
    return patches * (n - 1) * patches * 4 / 2**20


def musc_baseline(features: Any, topmin_max: float = 0.3) -> np.ndarray:
    """Mutual scores the way the public MuSc code computes them: a full FP32 cdist per image.

    For each image, the distances from its P patches to all other images' patches stacked are
    one P x (N-1)P float32 matrix; its per-image minimum and the mean of the k smallest follow.
    A CuPy ``features`` array runs it on the GPU, as MuSc runs it there with torch.
    """
    xp = module_of(features)
    n, p, c = features.shape
    k = max(1, int((n - 1) * topmin_max))
    flat = features.reshape(n * p, c)
    sq = xp.einsum("ij,ij->i", flat, flat)
    scores = xp.empty((n, p), xp.float32)
    for i in range(n):
        rows = slice(i * p, (i + 1) * p)
        others = xp.concatenate([flat[: i * p], flat[(i + 1) * p :]])
        others_sq = xp.concatenate([sq[: i * p], sq[(i + 1) * p :]])
        d2 = sq[rows, None] + others_sq[None]
        d2 -= 2.0 * (flat[rows] @ others.T)
        dist = xp.sqrt(xp.maximum(d2, 0.0, out=d2), out=d2)
        nearest = dist.reshape(p, n - 1, p).min(axis=2)
        scores[i] = xp.sort(nearest, axis=1)[:, :k].mean(axis=1)
    return to_numpy(scores)


def environment(device: str) -> dict[str, Any]:
    """Machine, device and library versions to record beside every result."""
    import importlib.metadata as md

    versions: dict[str, str] = {"python": platform.python_version(), "numpy": np.__version__}
    for dist in (
        "zsad",
        "torch",
        "onnxruntime",
        "onnxruntime-gpu",
        "cupy-cuda12x",
        "cupy-cuda13x",
        "tensorrt",
        "tensorrt-rtx-cu12",
        "openvino",
        "nncf",
    ):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "instruction_set": cpu_instruction_set(),
        "cpu_count": _cpu_count(),
        "load_average": load_average(),
        "device": device,
        "versions": versions,
    }
    if device.startswith("cuda"):
        info["gpu"] = _gpu_name()
    return info


def _gpu_name() -> str:
    # torch where it is installed; CuPy on a station that scores on the GPU without torch.
    try:
        from zsad.model.cuda import device_name  # torch, where it is installed

        name = device_name()
        if name is not None:
            return name
    except ImportError:
        pass
    try:
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    except Exception:  # noqa: BLE001 - a name is a label; its absence must not stop a bench
        return "unknown CUDA device"
    return name.decode() if isinstance(name, bytes) else str(name)


def _cpu_name() -> str:
    # platform.processor() is empty on Linux; /proc/cpuinfo names the model.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Vector extensions that decide GEMM speed, in the order they extend each other (x86, then Arm).
_ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimdhp",
    "sve",
    "sve2",
    "bf16",
    "i8mm",
)


def cpu_instruction_set(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's vector extensions as /proc/cpuinfo lists them (flags or Features), or why not."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return f"unknown ({cpuinfo} unreadable)"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            present = set(value.split())
            return " ".join(f for f in _ISA_FLAGS if f in present) or "no vector extension listed"
    return f"unknown (no flags in {cpuinfo})"


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages now: how busy the machine was around a measurement."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table of the given columns of `rows` (missing values as '-')."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = ["-" if row.get(col) is None else str(row[col]) for col in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
