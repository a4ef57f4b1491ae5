"""Time MSM (one (tap, r) map) against a plain float32 matmul of the same FLOPs on this machine.

Usage: python benchmarks/bench_msm.py --n 50,100,200 --channels 64,1024 --out benchmarks/results/cpu
Features are random unit vectors of the real shapes (P = 1369 patches at 518 px); MSM's cost
does not depend on the values. Writes msm.json and msm.md under --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from zsad.scoring import mutual_scores

PATCHES = 1369


def _features(n: int, channels: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, PATCHES, channels), dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _matmul_seconds(channels: int, flops: float, budget_mb: float) -> float:
    """Seconds a plain (rows, C) @ (C, P) float32 GEMM takes for `flops`, at MSM's tile size."""
    rows = max(PATCHES, int(budget_mb * 2**20) // (PATCHES * 4))
    a = np.random.default_rng(1).standard_normal((rows, channels), dtype=np.float32)
    b = np.random.default_rng(2).standard_normal((channels, PATCHES), dtype=np.float32)
    out = np.empty((rows, PATCHES), np.float32)
    per_call = 2.0 * rows * PATCHES * channels
    calls = max(1, round(flops / per_call))
    start = time.perf_counter()
    for _ in range(calls):
        np.matmul(a, b, out=out)
    return (time.perf_counter() - start) * flops / (per_call * calls)


def main() -> None:
    """Run the grid of (N, C) and write the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", default="50,100,200")
    parser.add_argument("--channels", default="64,1024")
    parser.add_argument("--memory-mb", type=float, default=64.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu"))
    args = parser.parse_args()
    rows = []
    for channels in (int(c) for c in args.channels.split(",")):
        for n in (int(v) for v in args.n.split(",")):
            feats = _features(n, channels)
            # Each unordered pair of images is one GEMM of P x P x C multiply-adds.
            flops = n * (n - 1) / 2 * PATCHES * PATCHES * channels * 2
            start = time.perf_counter()
            mutual_scores(feats, memory_budget_mb=args.memory_mb, device=args.device)
            seconds = time.perf_counter() - start
            matmul = _matmul_seconds(channels, flops, args.memory_mb)
            row = {
                "n": n,
                "channels": channels,
                "msm_s": round(seconds, 3),
                "msm_s_per_image": round(seconds / n, 4),
                "tflop": round(flops / 1e12, 3),
                "gflops": round(flops / seconds / 1e9, 1),
                "matmul_same_flops_s": round(matmul, 3),
                "fraction_of_matmul": round(matmul / seconds, 3),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "numpy": np.__version__}
    (args.out / "msm.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "| C | N | MSM s (one map) | s / image | GFLOP/s | matmul same FLOPs s | fraction |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['channels']} | {r['n']} | {r['msm_s']} | {r['msm_s_per_image']} | "
            f"{r['gflops']} | {r['matmul_same_flops_s']} | {r['fraction_of_matmul']} |"
        )
    (args.out / "msm.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
