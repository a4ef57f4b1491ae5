"""`zsad bench scale`: peak memory and time of `zsad infer` against the number of images N.

Each run is a `zsad infer` process of its own on the first N of one pool of generated images,
so its peak resident memory (``ru_maxrss`` of that child, from ``wait4``) is that run's alone.
At a fixed subset size K, peak memory should not depend on N and time should grow linearly in
it: the verdict gives the spread (max / min over N) of both.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zsad.api.subsets import plan_set
from zsad.bench import measure as bm
from zsad.bench.plots import line_chart
from zsad.bench.report import say, write_report
from zsad.data.synthetic import DEFECT_TYPES, render_sample
from zsad.errors import ZsadError

CATEGORY = "wood"
DEFECT_EVERY = 50
IMAGE_SIDE = 128
COLUMNS = [
    "config",
    "n",
    "subsets",
    "wall_s",
    "plan_s",
    "encode_s",
    "score_s",
    "other_s",
    "images_per_s",
    "ms_per_image",
    "peak_rss_mb",
]


@dataclass
class ChildRun:
    """What one `zsad infer` process did: exit code, seconds, peak RSS and RSS samples."""

    returncode: int
    wall_s: float
    peak_rss_mb: float
    samples: list[tuple[float, int, float]] = field(default_factory=list)  # s, records, RSS MiB


def bench_scale(
    out: Path,
    *,
    ns: list[int],
    subset_size: int = 100,
    encoder_args: list[str],
    configs: dict[str, list[str]] | None = None,
    data: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run `zsad infer` on N generated images for each N and each named configuration (extra
    infer arguments); writes OUT/bench.json, bench.md and PNG plots."""
    configs = configs or {"local": []}
    env = bm.environment("cpu")
    out.mkdir(parents=True, exist_ok=True)
    pool = data if data is not None else Path(tempfile.mkdtemp(prefix="zsad-bench-scale-"))
    rows: list[dict[str, Any]] = []
    series: dict[str, list[tuple[float, int, float]]] = {}
    try:
        paths = generate_pool(pool, max(ns), seed)
        for n in sorted(ns):
            listing = pool / f"first-{n}.txt"
            listing.write_text("".join(f"{p}\n" for p in paths[:n]))
            plan_s = _plan_seconds(paths[:n], subset_size)
            for name, extra in configs.items():
                row, samples = _run_one(
                    out / "runs" / f"{name}-{n}", listing, subset_size, encoder_args + extra
                )
                row.update(config=name, n=n, plan_s=plan_s)
                rows.append(row)
                series[f"{name}, N = {n}"] = samples
                say(
                    f"{name} N {n}: {row['wall_s']} s, {row['images_per_s']} img/s, "
                    f"peak RSS {row['peak_rss_mb']} MB"
                )
    finally:
        if data is None:
            shutil.rmtree(pool, ignore_errors=True)
    verdicts = {name: verdict([r for r in rows if r["config"] == name]) for name in configs}
    config = {
        "n": sorted(ns),
        "subset_size": subset_size,
        "encoder_args": encoder_args,
        "configs": {name: shlex.join(extra) for name, extra in configs.items()},
        "images": f"{CATEGORY} from zsad.data.synthetic, {IMAGE_SIDE} px, a defect every "
        f"{DEFECT_EVERY}, seed {seed}",
        "overlays": False,
    }
    # Every few seconds of each run: enough to see a slope, small enough to commit.
    thinned = {name: pts[:: max(1, len(pts) // 100)] for name, pts in series.items()}
    body = {"rows": rows, "verdict": verdicts, "rss_samples": thinned}
    return write_report(
        out,
        "scale",
        env,
        config,
        body,
        _markdown(config, rows, verdicts),
        _plots(out, rows, series),
    )


def generate_pool(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` generated images in ``folder`` (those already there are kept: the pool of the
    largest N serves every smaller N as its prefix); returns their paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = DEFECT_TYPES[CATEGORY]
    paths = []
    for i in range(count):
        path = folder / f"{i:06d}.png"
        paths.append(path)
        if path.exists():
            continue
        # One generator per image, so an image does not depend on how many were made before.
        rng = np.random.default_rng([seed, i])
        defect = kinds[(i // DEFECT_EVERY) % len(kinds)] if i % DEFECT_EVERY == 1 else None
        image, _ = render_sample(CATEGORY, rng, IMAGE_SIDE, defect)
        partial = path.with_suffix(".part")
        Image.fromarray(image).save(partial, format="PNG")
        partial.replace(path)
    return paths


def infer_command(listing: Path, out: Path, subset_size: int, extra: list[str]) -> list[str]:
    """The `zsad infer` command line of one run: no overlays, no progress bars."""
    return [
        sys.executable, "-m", "zsad", "infer", str(listing), "--out", str(out),
        "--subset-size", str(subset_size), "--no-overlays", "--no-progress", *extra,
    ]  # fmt: skip


def measure_child(command: list[str], log: Path, results: Path) -> ChildRun:
    """Run ``command`` to its end; its wall time, its own peak RSS and, every second, its RSS
    beside the records in ``results`` so far."""
    samples: list[tuple[float, int, float]] = []
    with log.open("wb") as sink:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        stop = threading.Event()
        sampler = threading.Thread(
            target=_sample, args=(child.pid, results, start, stop, samples), daemon=True
        )
        sampler.start()
        # wait4 gives this child's own resource use; RUSAGE_CHILDREN is a maximum over all.
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        sampler.join()
    peak = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return ChildRun(child.returncode, round(wall, 2), round(peak, 1), samples)


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Spread (max / min over N) of peak RSS, of time per image (total, and encode + score),
    and of the time each added image costs between successive N (1 when time is linear)."""

    def spread(values: list[float]) -> float | None:
        if len(values) < 2 or min(values) <= 0:
            return None
        return round(max(values) / min(values), 3)

    ordered = sorted(rows, key=lambda r: r["n"])
    # Start-up is paid once per run, so only the cost of the images added between runs shows
    # whether time is linear in N.
    added = [
        round(1e3 * (b["wall_s"] - a["wall_s"]) / (b["n"] - a["n"]), 2)
        for a, b in zip(ordered, ordered[1:], strict=False)
    ]
    return {
        "peak_rss_spread": spread([r["peak_rss_mb"] for r in rows]),
        "ms_per_image_spread": spread([r["ms_per_image"] for r in rows]),
        "encode_score_per_image_spread": spread(
            [(r["encode_s"] + r["score_s"]) / r["n"] for r in rows]
        ),
        "ms_per_added_image": added,
        "ms_per_added_image_spread": spread(added),
    }


def _run_one(
    folder: Path, listing: Path, subset_size: int, extra: list[str]
) -> tuple[dict[str, Any], list[tuple[float, int, float]]]:
    """One infer run into a scratch folder; keeps its summary.json and log in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="zsad-bench-scale-out-"))
    try:
        command = infer_command(listing, scratch, subset_size, extra)
        run = measure_child(command, folder / "infer.log", scratch / "results.jsonl")
        if run.returncode != 0:
            raise ZsadError(
                f"bench scale: `{shlex.join(command)}` exited {run.returncode}; see "
                f"{folder / 'infer.log'}"
            )
        shutil.copy(scratch / "summary.json", folder / "summary.json")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = json.loads((folder / "summary.json").read_text())
    n, timing = summary["images"], summary["timing"]
    row = {
        "subsets": summary["subsets"],
        "wall_s": run.wall_s,
        "encode_s": timing["encode_s"],
        "score_s": timing["score_s"],
        # Start-up (imports, the encoder), planning and writing records and maps.
        "other_s": round(run.wall_s - timing["encode_s"] - timing["score_s"], 2),
        "images_per_s": round(n / run.wall_s, 2),
        "ms_per_image": round(1e3 * run.wall_s / n, 2),
        "peak_rss_mb": run.peak_rss_mb,
        "rss_end_mb": run.samples[-1][2] if run.samples else None,
    }
    return row, run.samples


def _plan_seconds(paths: list[Path], subset_size: int) -> float:
    """Seconds to plan N files as infer does (a content hash of each, their order and split)."""
    start = time.perf_counter()
    plan_set(paths, lambda order: None, subset_size=subset_size)
    return round(time.perf_counter() - start, 3)


def _sample(
    pid: int,
    results: Path,
    start: float,
    stop: threading.Event,
    samples: list[tuple[float, int, float]],
) -> None:
    read, written = 0, 0
    while not stop.wait(1.0):
        try:
            rss = _vm_rss_mb(pid)
            # Only what was appended since the last look: a re-read would cost the bench's
            # process more CPU the longer the run, beside the run it measures.
            with results.open("rb") as handle:
                handle.seek(read)
                fresh = handle.read()
        except (OSError, ValueError):
            continue  # the child has not written its first subset yet, or has just exited
        read, written = read + len(fresh), written + fresh.count(b"\n")
        samples.append((round(time.perf_counter() - start, 1), written, rss))


def _vm_rss_mb(pid: int) -> float:
    """The resident memory of process ``pid`` now (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise ValueError(f"no VmRSS for process {pid}")


def _markdown(
    config: dict[str, Any], rows: list[dict[str, Any]], verdicts: dict[str, dict[str, Any]]
) -> str:
    text = (
        f"`zsad infer` on the first N of {config['images']}; subset size "
        f"{config['subset_size']}; overlays off; encoder `{shlex.join(config['encoder_args'])}`. "
        "Each run is a process of its own: peak RSS is its ru_maxrss. plan_s is the planning "
        "(a content hash of every file, the order and the split), timed apart in the bench's "
        "process; other_s is the run's time outside encoding and scoring (start-up, planning, "
        "writing records and maps).\n\n"
    )
    text += bm.markdown_table(rows, COLUMNS) + "\n"
    for name, got in verdicts.items():
        text += (
            f"- {name}: peak RSS max/min over N {got['peak_rss_spread']}; time per image "
            f"max/min {got['ms_per_image_spread']} (encode + score alone: "
            f"{got['encode_score_per_image_spread']}); each image added between successive "
            f"N: {got['ms_per_added_image']} ms (max/min {got['ms_per_added_image_spread']})\n"
        )
    return text


def _plots(
    out: Path, rows: list[dict[str, Any]], series: dict[str, list[tuple[float, int, float]]]
) -> list[Path]:
    names = sorted({r["config"] for r in rows})
    plots = []
    for key, file, title, unit in (
        ("peak_rss_mb", "memory_vs_n.png", "zsad infer: peak RSS vs N", "peak RSS MB"),
        ("ms_per_image", "time_vs_n.png", "zsad infer: wall time per image vs N", "ms per image"),
    ):
        by_config = {c: [(r["n"], r[key]) for r in rows if r["config"] == c] for c in names}
        plots.append(
            line_chart(
                out / file, by_config, title=title, xlabel="N images", ylabel=unit, logx=True
            )
        )
    sampled = {name: [(s[1], s[2]) for s in pts] for name, pts in series.items() if len(pts) > 1}
    if sampled:
        plots.append(
            line_chart(
                out / "rss_over_run.png",
                sampled,
                title="zsad infer: RSS while it runs",
                xlabel="records written",
                ylabel="RSS MB",
            )
        )
    return plots
