"""Images per second of `zsad infer` in one process and on a local Ray instance with 1 and 2
workers: the same run, the same records.

    python benchmarks/ray_scale.py OUT [--images 200] [--image-size 224] [--subset-size 50]
        [--workers 1,2] [--repeats 1]

Generates IMAGES wood parts (128 px, a defect every 20th) and exports a zsad-tiny STAPS bundle
in a temporary folder, then per repeat scores the images with MuSc (overlays on) in this
process (`infer_to_folder`, what `zsad infer` runs) and with `infer_on_ray` on a local Ray
instance of W CPUs for each worker count W. Each run is timed from the call to its return:
planning, scoring and writing maps, overlays and records; the Ray instance is started before
the clock (its start-up is reported apart), the actors' start-up and each opening the bundle are
inside it. Every Ray run's records must equal the local run's (all but their write time).
Writes OUT/ray_scale.json and OUT/ray_scale.md; each row has the load average (1, 5, 15 min)
at its start and end, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from typer.testing import CliRunner

import zsad
from zsad.api.detector import Detector
from zsad.api.infer import infer_to_folder
from zsad.api.ray_infer import RayCluster, infer_on_ray, ray_session
from zsad.api.subsets import SubsetRequest
from zsad.cli.app import app
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


def export_bundle(out: Path, image_size: int) -> Path:
    """A zsad-tiny STAPS bundle at ``image_size``."""
    args = ["export", "--model", "zsad-tiny", "--method", "staps"]
    args += ["--image-size", str(image_size), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return out


def records(out: Path) -> list[dict[str, Any]]:
    """results.jsonl without the time each record was written."""
    lines = (out / "results.jsonl").read_text().splitlines()
    return [{**json.loads(line), "time": None} for line in lines]


def timed(run: Any, out: Path, images: int, name: str) -> dict[str, Any]:
    """Run ``run(out)`` into a fresh OUT; its row."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    load_start = os.getloadavg()
    start = time.perf_counter()
    run(out)
    seconds = time.perf_counter() - start
    return {
        "run": name,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 2),
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
    """The rows of every run, and the local run's records."""
    paths = make_images(work / "data", args.images)
    bundle = export_bundle(work / "bundle", args.image_size)
    opener = functools.partial(Detector.from_bundle, bundle, device="cpu")
    kw: dict[str, Any] = {"subsets": SubsetRequest(size=args.subset_size), "echo": lambda _: None}
    runs = work / "runs"

    def here(out: Path) -> None:
        with opener() as detector:
            infer_to_folder(detector, paths, out, **kw)

    rows = []
    for _ in range(args.repeats):
        rows.append(timed(here, runs / "here", len(paths), "one process"))
        expected = records(runs / "here")
        for workers in [int(w) for w in args.workers.split(",")]:
            started = time.perf_counter()
            with ray_session("local", cpus=workers):
                start_up = time.perf_counter() - started
                cluster = RayCluster(workers=workers)

                def on_ray(out: Path, cluster: RayCluster = cluster) -> None:
                    infer_on_ray(opener, paths, out, cluster=cluster, **kw)

                out = runs / f"ray-{workers}"
                row = timed(on_ray, out, len(paths), f"ray, {workers} workers")
            row["ray_start_s"] = round(start_up, 2)
            row["same_records"] = records(out) == expected
            assert row["same_records"], f"{out}: records differ from the local run's"
            rows.append(row)
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
        "| run | s | images/s | Ray start s | load at start | load at end |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        loads = [" / ".join(f"{v:.2f}" for v in row[k]) for k in ("load_start", "load_end")]
        start = row.get("ray_start_s", "-")
        table.append(
            f"| {row['run']} | {row['seconds']} | {row['images_per_s']} | {start} | "
            f"{loads[0]} | {loads[1]} |"
        )
    (args.out / "ray_scale.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
