"""Aligned MSM's kernel against the kernel of an earlier revision, in one process, alternating.

    python benchmarks/aligned_paired.py REV OUT [--rounds 7]

loads zsad/scoring/aligned.py as it was at git revision REV beside the installed one and times
both on the same random unit features at ViT-L shapes (P = 1369, C = 1024), alternating run by
run so that both see the same machine: sets of 10 at w = 3 and 5, a set of 20 at w = 3, and one
query against a bank of 32 at w = 3 and 5, each with the 64 MB budget of `zsad bench scoring`.
Writes OUT/paired.json and OUT/paired.md: the least and median seconds of each, and the earlier
kernel's least time over the current one's. Which OpenBLAS kernels ran is recorded
(OPENBLAS_CORETYPE=Zen forces its AVX2 kernels on an AVX-512 CPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
from threadpoolctl import threadpool_info

from zsad.scoring import aligned

CASES = (("set", 10, 3), ("set", 10, 5), ("set", 20, 3), ("bank", 1, 3), ("bank", 1, 5))
BANK = 32
BUDGET = 64 << 20


def earlier_kernel(rev: str) -> ModuleType:
    """zsad.scoring.aligned as it was at ``rev``, imported under a name of its own."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "show", f"{rev}:src/zsad/scoring/aligned.py"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "aligned_earlier.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("aligned_earlier", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["aligned_earlier"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Random unit vectors along the last axis, float32."""
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def main() -> None:
    """Time both kernels on every case and write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev")
    parser.add_argument("out", type=Path)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    before = earlier_kernel(args.rev)
    rng = np.random.default_rng(0)
    features, bank = unit(rng, 20, 1369, 1024), unit(rng, BANK, 1369, 1024)
    rows = []
    for mode, n, window in CASES:
        query = features[:n]
        ref, symmetric = (query, True) if mode == "set" else (bank, False)
        times: dict[str, list[float]] = {"earlier": [], "current": []}
        for _ in range(args.rounds):
            for name, module in (("earlier", before), ("current", aligned)):
                start = time.perf_counter()
                module.aligned_nearest_cosines(np, query, ref, window, symmetric, BUDGET)
                times[name].append(time.perf_counter() - start)
        least = {name: min(values) for name, values in times.items()}
        rows.append(
            {
                "mode": mode,
                "n": n,
                "bank": BANK if mode == "bank" else None,
                "window": window,
                **{f"{name}_least_s": round(v, 4) for name, v in least.items()},
                **{f"{k}_median_s": round(float(np.median(v)), 4) for k, v in times.items()},
                "earlier_over_current": round(least["earlier"] / least["current"], 2),
            }
        )
        print(rows[-1], flush=True)
    blas = [
        {key: lib.get(key) for key in ("internal_api", "architecture", "num_threads")}
        for lib in threadpool_info()
        if lib.get("user_api") == "blas"
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"earlier_revision": args.rev, "rounds": args.rounds, "blas": blas, "rows": rows}
    (args.out / "paired.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"Earlier kernel: `{args.rev}`; BLAS: {blas}; least and median of {args.rounds} "
        "alternating runs.",
        "",
        "| mode | N | bank K | window | earlier s | current s | earlier / current |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['mode']} | {row['n']} | {row['bank'] or '-'} | {row['window']} | "
            f"{row['earlier_least_s']} ({row['earlier_median_s']}) | "
            f"{row['current_least_s']} ({row['current_median_s']}) | "
            f"{row['earlier_over_current']}× |"
        )
    (args.out / "paired.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
