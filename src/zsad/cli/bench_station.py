"""`zsad bench station`: sustained throughput and memory of a station over thousands of frames."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from zsad.cli.common import BundleOpt, DeviceOpt, ModelOpt, SeedOpt
from zsad.errors import ZsadError


def _frames(folder: Path, count: int, defect_every: int, seed: int) -> list[int]:
    """Write `count` synthetic wood frames, oldest first; returns the defective indices."""
    import os

    from PIL import Image

    from zsad.data.synthetic import DEFECT_TYPES, render_sample

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    defects = []
    kinds = DEFECT_TYPES["wood"]
    for i in range(count):
        defect = None
        if defect_every and i % defect_every == defect_every - 1:
            defect = kinds[len(defects) % len(kinds)]
            defects.append(i)
        image, _ = render_sample("wood", rng, 128, defect)
        path = folder / f"{i:06d}.png"
        Image.fromarray(image).save(path)
        # Arrival order is modification order; make it exact whatever the clock resolution.
        os.utime(path, ns=(10**18 + i * 1000, 10**18 + i * 1000))
    return defects


Sample = tuple[float, int, float, float | None]  # seconds, scored, RSS MiB, GPU pool MiB


def _gpu_pool_probe(config: Any) -> Callable[[], float] | None:
    """MiB in use in CuPy's pool, where the bank and MSM live when scoring runs on the GPU."""
    from zsad.scoring._xp import array_module

    if array_module(config.device) is np:
        return None
    import cupy

    pool = cupy.get_default_memory_pool()
    return lambda: round(pool.used_bytes() / 2**20, 1)


def _sample(
    station: Any, stop: threading.Event, samples: list[Sample], gpu: Callable[[], float] | None
) -> None:
    from zsad.runtime.station import rss_mb

    start = time.perf_counter()
    while not stop.wait(0.5):
        gpu_mb = gpu() if gpu else None
        samples.append((time.perf_counter() - start, station.scored, rss_mb(), gpu_mb))


def _slope_mb_per_1000(samples: list[Sample], column: int = 2) -> float | None:
    """Growth of RSS (column 2) or the GPU pool (3) over the second half, by least squares."""
    half = [(s[1], s[column]) for s in samples if s[1] >= samples[-1][1] / 2]
    if len(half) < 3 or half[-1][0] == half[0][0] or half[0][1] is None:
        return None
    n, mb = np.array(half, np.float64).T
    return round(float(np.polyfit(n, mb, 1)[0] * 1000), 3)


def station(
    out: Annotated[Path, typer.Option("--out", help="Folder for bench.json and bench.md.")],
    frames: Annotated[int, typer.Option("--frames", min=10, help="Frames to stream.")] = 3000,
    bank: Annotated[int, typer.Option("--bank", min=2, help="STAPS rolling bank size.")] = 32,
    model: ModelOpt = "zsad-tiny",
    image_size: Annotated[
        int | None,
        typer.Option("--image-size", help="Encoder input size (default 224; a bundle's own)."),
    ] = None,
    bundle: BundleOpt = None,
    device: DeviceOpt = "auto",
    defect_every: Annotated[
        int, typer.Option("--defect-every", min=0, help="Plant a defect every N frames.")
    ] = 50,
    overlays: Annotated[
        bool, typer.Option("--overlays/--no-overlays", help="Write overlays as a station does.")
    ] = True,
    seed: SeedOpt = 0,
) -> None:
    """Stream generated frames through `zsad watch`'s station and record images/s and RSS.

    The frames are written to a hot folder first (not timed), then the station drains it at full
    speed; memory is sampled every 0.5 s. A flat RSS over the second half (MB per 1000 images
    near 0) shows the bank and the writers do not grow with the run length.
    """
    from zsad import benchmarking as bm
    from zsad.cli.methods import EncoderChoice
    from zsad.cli.station_cmds import STREAM_DEFAULTS, stream_method, stream_scorer
    from zsad.metrics import image_metrics
    from zsad.runtime.atomic import write_json
    from zsad.runtime.frames import HotFolder
    from zsad.runtime.station import Station, StationOptions
    from zsad.scoring.pipeline import SetScoringConfig

    if image_size is None and bundle is None:
        image_size = 224
    encoder = EncoderChoice(model, None, "random", image_size, device, bundle, None)
    method = stream_method(None, encoder)
    config = replace(SetScoringConfig(), **STREAM_DEFAULTS)
    backend, scorer, _ = stream_scorer(method, encoder, config, bank, None, None, None)
    work = Path(tempfile.mkdtemp(prefix="zsad-bench-station-"))
    try:
        start = time.perf_counter()
        defects = _frames(work / "in", frames, defect_every, seed)
        typer.echo(f"wrote {frames} frames in {time.perf_counter() - start:.1f} s", err=True)
        options = StationOptions(
            out=work / "out", overlays=overlays, status_interval_s=10.0, idle_exit_s=1.0
        )
        runner = Station(
            backend,
            scorer,
            lambda done: HotFolder(work / "in", done, exclude=work / "out"),
            options,
        )
        samples: list[Sample] = []
        stop = threading.Event()
        probe = _gpu_pool_probe(config) if method == "staps" else None
        sampler = threading.Thread(target=_sample, args=(runner, stop, samples, probe), daemon=True)
        sampler.start()
        summary = runner.run()
        stop.set()
        sampler.join()
        records = [
            json.loads(line) for line in (work / "out" / "results.jsonl").read_text().splitlines()
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = _body(records, samples, defects, summary)
    if defects and method == "staps":
        planted = set(defects)
        labels = np.array([int(int(Path(r["name"]).stem) in planted) for r in records])
        body["image_auroc"] = round(
            image_metrics(labels, [r["score"] for r in records])["auroc"], 4
        )
    env = bm.environment("cuda" if backend.name.endswith("cuda") else "cpu")
    config_out = {
        "frames": frames,
        "bank": bank,
        "model": model if bundle is None else str(bundle),
        "image_size": backend.image_size,
        "backend": backend.name,
        "method": method,
        "defect_every": defect_every,
        "overlays": overlays,
        "seed": seed,
    }
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_memory(out / "memory.png", body["samples"])
    payload = {"command": "station", "environment": env, "config": config_out, **body}
    write_json(out / "bench.json", {**payload, "plots": [plot.name]})
    (out / "bench.md").write_text(_markdown(env, config_out, body) + f"\n![memory]({plot.name})\n")
    typer.echo(
        f"{body['images']} images at {body['images_per_s']} img/s; RSS {body['rss_mb']} MB, "
        f"second-half growth {body['rss_growth_mb_per_1000_images']} MB / 1000 images"
    )


def plot_memory(path: Path, samples: list[dict[str, Any]]) -> Path:
    """RSS (and the GPU pool) against images scored: flat lines are a station that does not grow."""
    from zsad.bench_plots import line_chart

    series = {"RSS": [(s["scored"], s["rss_mb"]) for s in samples]}
    gpu = [(s["scored"], s["gpu_pool_mb"]) for s in samples if s.get("gpu_pool_mb") is not None]
    if gpu:
        series["GPU pool (CuPy)"] = gpu
    return line_chart(
        path,
        series,
        title="Station memory over the run",
        xlabel="images scored",
        ylabel="MB",
    )


def _body(
    records: list[dict[str, Any]],
    samples: list[Sample],
    defects: list[int],
    summary: dict[str, Any],
) -> dict[str, Any]:
    if not records:
        raise ZsadError("bench station: nothing was scored")
    stages = {}
    for key in ("decode_ms", "encode_ms", "score_ms", "write_ms", "latency_ms"):
        values = np.array([r["timing"][key] for r in records if r["phase"] == "stream"])
        if values.size:
            stages[key] = {
                "p50": round(float(np.percentile(values, 50)), 2),
                "p99": round(float(np.percentile(values, 99)), 2),
            }
    elapsed = samples[-1][0] if samples else float("nan")
    return {
        "images": len(records),
        "seconds": round(elapsed, 1),
        "images_per_s": round(len(records) / elapsed, 2) if samples else None,
        "stages_stream": stages,
        "rss_mb": {
            "after_10pct": next((s[2] for s in samples if s[1] >= len(records) / 10), None),
            "after_50pct": next((s[2] for s in samples if s[1] >= len(records) / 2), None),
            "end": samples[-1][2] if samples else None,
        },
        "rss_growth_mb_per_1000_images": _slope_mb_per_1000(samples),
        "gpu_pool_mb_end": samples[-1][3] if samples else None,
        "gpu_pool_growth_mb_per_1000_images": _slope_mb_per_1000(samples, column=3),
        "bank": {k: summary.get(k) for k in ("bank", "bank_mb_per_image", "bank_mb")},
        "samples": [
            {"s": round(t, 2), "scored": n, "rss_mb": rss, "gpu_pool_mb": gpu}
            for t, n, rss, gpu in samples[:: max(1, len(samples) // 200)]
        ],
    }


def _markdown(env: dict[str, Any], config: dict[str, Any], body: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    stages = body["stages_stream"]
    lines = [
        "# zsad bench station",
        "",
        f"Device: {env.get('gpu', env['processor'])} ({env['cpu_count']} CPU cores); {versions}",
        "",
        f"{config['frames']} frames, {config['method']}, bank {config['bank']}, "
        f"{config['backend']} at {config['image_size']} px, overlays {config['overlays']}.",
        "",
        "| images | images/s | RSS after 10 % MB | RSS after 50 % MB | RSS end MB "
        "| growth MB / 1000 images (2nd half) | bank MB |",
        "|---|---|---|---|---|---|---|",
        f"| {body['images']} | {body['images_per_s']} | {body['rss_mb']['after_10pct']} | "
        f"{body['rss_mb']['after_50pct']} | {body['rss_mb']['end']} | "
        f"{body['rss_growth_mb_per_1000_images']} | {body['bank']['bank_mb']} |",
        "",
        *(
            [
                f"GPU pool (CuPy: bank and MSM) at the end: {body['gpu_pool_mb_end']} MB, "
                f"second-half growth {body['gpu_pool_growth_mb_per_1000_images']} MB / 1000 "
                "images.",
                "",
            ]
            if body["gpu_pool_mb_end"] is not None
            else []
        ),
        "| stage (streamed images) | p50 ms | p99 ms |",
        "|---|---|---|",
        *(f"| {k[:-3]} | {v['p50']} | {v['p99']} |" for k, v in stages.items()),
        "",
    ]
    if "image_auroc" in body:
        lines.insert(-1, f"Image AUROC of the planted defects: {body['image_auroc']}\n")
    return "\n".join(lines)


def register(bench_app: typer.Typer) -> None:
    """Attach `station` to the bench sub-app."""
    bench_app.command("station")(station)
