"""`zsad bench station`: sustained throughput and memory of a station over thousands of frames."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from zsad.api.detector import Detector
from zsad.api.encoders import EncoderSpec
from zsad.api.scorers import MethodOptions
from zsad.arrays import array_module
from zsad.bench import measure as bm
from zsad.bench.plots import line_chart
from zsad.bench.report import markdown_header, say, warn
from zsad.data.synthetic import DEFECT_TYPES, render_sample
from zsad.errors import ZsadError
from zsad.evaluation.metrics import image_metrics
from zsad.formats.atomic import write_json
from zsad.formats.methods import DEFAULT_BANK
from zsad.scoring.pipeline import SetScoringConfig
from zsad.station.frames import HotFolder
from zsad.station.station import Station, StationOptions
from zsad.station.status import rss_mb

Sample = tuple[float, int, float, float | None]  # seconds, scored, RSS MiB, GPU pool MiB


def bench_station(
    out: Path,
    *,
    frames: int = 3000,
    bank: int = DEFAULT_BANK,
    model: str = "zsad-tiny",
    image_size: int | None = None,
    bundle: Path | None = None,
    device: str = "auto",
    defect_every: int = 50,
    overlays: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Stream generated frames through a station; writes OUT/bench.json, bench.md, memory.png."""
    scoring = SetScoringConfig()
    detector = open_detector(model, image_size, bundle, device, scoring)
    method, backend = detector.method.name, detector.backend
    banked = not detector.method.per_image
    started_under = bm.load_average()
    with detector:
        probe = _gpu_pool_probe(scoring) if banked else None
        records, samples, defects, summary = _run(
            detector.stream(bank), probe, frames, defect_every, overlays, seed
        )
    body = _body(records, samples, summary)
    if defects and banked:
        body["image_auroc"] = _auroc(records, defects)
    env = bm.environment("cuda" if backend.name.endswith("cuda") else "cpu")
    env.update(load_average=started_under, load_average_at_end=env["load_average"])
    config = {
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
    payload = {"command": "station", "environment": env, "config": config, **body}
    payload["plots"] = [plot.name]
    write_json(out / "bench.json", payload)
    (out / "bench.md").write_text(_markdown(env, config, body) + f"\n![memory]({plot.name})\n")
    say(
        f"{body['images']} images at {body['images_per_s']} img/s; RSS {body['rss_mb']} MB, "
        f"second-half growth {body['rss_growth_mb_per_1000_images']} MB / 1000 images"
    )
    return payload


def open_detector(
    model: str,
    image_size: int | None,
    bundle: Path | None,
    device: str,
    scoring: SetScoringConfig | None = None,
) -> Detector:
    """The Detector a station bench runs: a bundle, or ``model`` at ``image_size`` (224)."""
    if image_size is None and bundle is None:
        image_size = 224
    spec = EncoderSpec(model, None, "random", image_size, device, bundle, None)
    options = MethodOptions(scoring or SetScoringConfig())
    return Detector.from_spec(spec, None, options=options, progress=False)


def plot_memory(path: Path, samples: list[dict[str, Any]]) -> Path:
    """RSS (and the GPU pool) against images scored: flat lines are a station that does not grow."""
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


def _run(
    stream: Any,
    probe: Callable[[], float] | None,
    frames: int,
    defect_every: int,
    overlays: bool,
    seed: int,
) -> tuple[list[dict[str, Any]], list[Sample], list[int], dict[str, Any]]:
    """Write the frames to a hot folder (untimed), then drain it at full speed while sampling."""
    work = Path(tempfile.mkdtemp(prefix="zsad-bench-station-"))
    try:
        start = time.perf_counter()
        defects = _frames(work / "in", frames, defect_every, seed)
        warn(f"wrote {frames} frames in {time.perf_counter() - start:.1f} s")
        options = StationOptions(
            out=work / "out", overlays=overlays, status_interval_s=10.0, idle_exit_s=1.0
        )
        runner = Station(
            stream,
            lambda done: HotFolder(work / "in", done, exclude=work / "out"),
            options,
        )
        samples: list[Sample] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(runner, stop, samples, probe), daemon=True)
        sampler.start()
        summary = runner.run()
        stop.set()
        sampler.join()
        lines = (work / "out" / "results.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines], samples, defects, summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _frames(folder: Path, count: int, defect_every: int, seed: int) -> list[int]:
    """Write `count` synthetic wood frames, oldest first; returns the defective indices."""
    from PIL import Image

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


def _gpu_pool_probe(config: Any) -> Callable[[], float] | None:
    """MiB in use in CuPy's pool, where the bank and MSM live when scoring runs on the GPU."""
    if array_module(config.device) is np:
        return None
    import cupy

    pool = cupy.get_default_memory_pool()
    return lambda: round(pool.used_bytes() / 2**20, 1)


def _sample(
    station: Any, stop: threading.Event, samples: list[Sample], gpu: Callable[[], float] | None
) -> None:
    start = time.perf_counter()
    while not stop.wait(0.5):
        gpu_mb = gpu() if gpu else None
        samples.append((time.perf_counter() - start, station.report.scored, rss_mb(), gpu_mb))


def _slope_mb_per_1000(samples: list[Sample], column: int = 2) -> float | None:
    """Growth of RSS (column 2) or the GPU pool (3) over the second half, by least squares."""
    half = [(s[1], s[column]) for s in samples if s[1] >= samples[-1][1] / 2]
    if len(half) < 3 or half[-1][0] == half[0][0] or half[0][1] is None:
        return None
    n, mb = np.array(half, np.float64).T
    return round(float(np.polyfit(n, mb, 1)[0] * 1000), 3)


def _auroc(records: list[dict[str, Any]], defects: list[int]) -> float:
    """Image AUROC of the planted defects (frame names are their indices)."""
    planted = set(defects)
    labels = np.array([int(int(Path(r["name"]).stem) in planted) for r in records])
    return round(image_metrics(labels, [r["score"] for r in records])["auroc"], 4)


def _body(
    records: list[dict[str, Any]], samples: list[Sample], summary: dict[str, Any]
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
    stages = body["stages_stream"]
    gpu_pool = (
        f"GPU pool (CuPy: bank and MSM) at the end: {body['gpu_pool_mb_end']} MB, second-half "
        f"growth {body['gpu_pool_growth_mb_per_1000_images']} MB / 1000 images.\n\n"
    )
    text = markdown_header("station", env) + (
        f"{config['frames']} frames, {config['method']}, bank {config['bank']}, "
        f"{config['backend']} at {config['image_size']} px, overlays {config['overlays']}.\n\n"
        "| images | images/s | RSS after 10 % MB | RSS after 50 % MB | RSS end MB "
        "| growth MB / 1000 images (2nd half) | bank MB |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| {body['images']} | {body['images_per_s']} | {body['rss_mb']['after_10pct']} | "
        f"{body['rss_mb']['after_50pct']} | {body['rss_mb']['end']} | "
        f"{body['rss_growth_mb_per_1000_images']} | {body['bank']['bank_mb']} |\n\n"
    )
    if body["gpu_pool_mb_end"] is not None:
        text += gpu_pool
    text += "| stage (streamed images) | p50 ms | p99 ms |\n|---|---|---|\n"
    text += "".join(f"| {k[:-3]} | {v['p50']} | {v['p99']} |\n" for k, v in stages.items())
    if "image_auroc" in body:
        text += f"Image AUROC of the planted defects: {body['image_auroc']}\n\n"
    return text
