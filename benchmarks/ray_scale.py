"""Images per second of `zsad infer` in one process and with `--ray local` at 1 and 2 workers:
the same run, the same records.

    python benchmarks/ray_scale.py OUT [--images 200] [--image-size 224] [--subset-size 50]
        [--workers 1,2] [--repeats 1]

Generates IMAGES wood parts (128 px, a defect every 20th) and exports a zsad-tiny STAPS bundle
in a temporary folder, then per repeat runs `zsad infer` on them (MuSc, overlays on, subsets of
SUBSET_SIZE) as a command of its own: without Ray, without Ray with OMP_NUM_THREADS=1 (what Ray
gives an actor of one CPU, so NumPy's BLAS runs one thread), and with `--ray local --ray-workers
W` for each W (a local instance of W CPUs). Each is timed from start to exit, so the Ray rows
include starting Ray, its actors and each actor opening the bundle; summary.json's encode and
score seconds (summed over the subsets, in whichever process scored them) are kept beside.
Every run's records must equal the first's (all but their write time). Writes OUT/ray_scale.json
and OUT/ray_scale.md; each row has the load average (1, 5, 15 min) at its start and end, since
the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import zsad
from zsad.data.synthetic import render_sample


def make_images(folder: Path, count: int) -> list[Path]:
    """``count`` generated wood parts, a defect on every 20th."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        image, _ = render_sample("wood", rng, 128, "scratch" if i % 20 == 19 else None)
        path = folder / f"{i:04d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def zsad_command(*args: str, env: dict[str, str] | None = None) -> None:
    """Run `zsad ARGS` in a fresh interpreter; fail with its stderr."""
    command = [sys.executable, "-m", "zsad", *args]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, result.stderr


def records(out: Path) -> list[dict[str, Any]]:
    """results.jsonl without the time each record was written."""
    lines = (out / "results.jsonl").read_text().splitlines()
    return [{**json.loads(line), "time": None} for line in lines]


def timed(out: Path, name: str, args: list[str], env: dict[str, str] | None = None) -> dict:
    """`zsad infer ARGS --out OUT` into a fresh OUT: its row."""
    shutil.rmtree(out, ignore_errors=True)
    load_start = os.getloadavg()
    start = time.perf_counter()
    zsad_command("infer", *args, "--out", str(out), env=env)
    seconds = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    return {
        "run": name,
        "seconds": round(seconds, 2),
        "images_per_s": round(summary["scored"] / seconds, 2),
        "encode_s": summary["timing"]["encode_s"],
        "score_s": summary["timing"]["score_s"],
        "load_start": [round(v, 2) for v in load_start],
        "load_end": [round(v, 2) for v in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--subset-size", type=int, default=50)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ray-scale-"))
    try:
        rows, expected = measure(args, work)
    finally:
        shutil.rmtree(work)
    write(args, rows, expected)


def measure(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], list[dict]]:
    """The rows of every run, and the first run's records."""
    make_images(work / "data", args.images)
    bundle = work / "bundle"
    zsad_command(
        "export", "--model", "zsad-tiny", "--method", "staps",
        "--image-size", str(args.image_size), "--out", str(bundle),
    )  # fmt: skip
    common = [str(work / "data"), "--bundle", str(bundle), "--device", "cpu", "--no-progress"]
    common += ["--subset-size", str(args.subset_size)]
    runs: list[tuple[str, list[str], dict[str, str] | None]] = [
        ("one process", [], None),
        ("one process, OMP_NUM_THREADS=1", [], {"OMP_NUM_THREADS": "1"}),
    ]
    for w in args.workers.split(","):
        runs.append((f"--ray local, {w} workers", ["--ray", "local", "--ray-workers", w], None))
    rows: list[dict[str, Any]] = []
    expected: list[dict] = []
    for _ in range(args.repeats):
        for name, extra, env in runs:
            out = work / "runs" / name.replace(" ", "_")
            rows.append(timed(out, name, [*common, *extra], env))
            expected = expected or records(out)
            rows[-1]["same_records"] = records(out) == expected
            assert rows[-1]["same_records"], f"{name}: records differ from the first run's"
    return rows, expected


def write(args: argparse.Namespace, rows: list[dict[str, Any]], expected: list[dict]) -> None:
    """OUT/ray_scale.json and OUT/ray_scale.md."""
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "images": args.images,
        "image_size": args.image_size,
        "subset_size": args.subset_size,
        "subsets": len({r["subset"] for r in expected}),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "zsad": zsad.__version__,
        "ray": version("ray"),
        "rows": rows,
    }
    (args.out / "ray_scale.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = [
        "| run | s | images/s | encode s | score s | load at start | load at end |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        loads = [" / ".join(f"{v:.2f}" for v in row[k]) for k in ("load_start", "load_end")]
        table.append(
            f"| {row['run']} | {row['seconds']} | {row['images_per_s']} | {row['encode_s']} | "
            f"{row['score_s']} | {loads[0]} | {loads[1]} |"
        )
    (args.out / "ray_scale.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
