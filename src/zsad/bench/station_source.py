"""`zsad bench station --source URI`: a station fed by a camera beside one fed by a hot folder.

Each of the four runs (hot folder, camera; overlays on, off) is one station on the same
detector. First a burst: ``frames`` frames at once (written to the hot folder before the station
starts; ``frames`` software triggers fired together at the camera) and the station's pace over
them in frames/s. Then ``triggers`` frames one at a time, each waited for: the time from the
trigger (the rename into the hot folder; ``trigger()`` at the camera) to its record in the
journal. The camera's figures are given as ratios to the hot folder's with the same overlays.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from zsad.bench import measure as bm
from zsad.bench.report import markdown_header, say, warn
from zsad.errors import ZsadError

HOT_FOLDER = "hot folder"


def bench_station_source(
    out: Path,
    detector: Any,
    source: str,
    *,
    settings: dict[str, str],
    frames: int,
    triggers: int,
    bank: int,
    seed: int,
) -> dict[str, Any]:
    """Four station runs (hot folder and ``source``, overlays on and off); writes OUT/bench.json
    and OUT/bench.md and returns what they hold."""
    from zsad.formats.atomic import write_json

    if frames <= bank:
        raise ZsadError(f"--frames {frames}: give more than --bank {bank}, past the warm-up")
    started_under = bm.load_average()
    images = _wood(frames + triggers, seed)
    rows = []
    for overlays in (True, False):
        for kind in (HOT_FOLDER, source):
            with tempfile.TemporaryDirectory(prefix="zsad-bench-source-") as work:
                run = _run_hot_folder if kind == HOT_FOLDER else _run_camera(source, settings)
                row = run(Path(work), detector.stream(bank), images, frames, overlays)
            row.update(source=kind, overlays=overlays)
            warn(
                f"{kind}, overlays {overlays}: {row['frames_per_s']} frames/s, trigger to record "
                f"p50 {row['latency_ms']['p50']} ms, p99 {row['latency_ms']['p99']} ms"
            )
            rows.append(row)
    ratios = _ratios(rows)
    env = bm.environment("cpu")
    env.update(load_average=started_under, load_average_at_end=env["load_average"])
    config = {
        "source": source,
        "camera_settings": settings,
        "frames": frames,
        "triggers": triggers,
        "bank": bank,
        "backend": detector.backend.name,
        "image_size": detector.backend.image_size,
        "method": detector.method.name,
        "seed": seed,
    }
    payload = {"command": "station", "environment": env, "config": config, "runs": rows}
    payload["camera_vs_hot_folder"] = ratios
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", payload)
    (out / "bench.md").write_text(_markdown(env, config, rows, ratios))
    for overlays, ratio in ratios.items():
        say(f"camera / hot folder, overlays {overlays}: {ratio}")
    return payload


def _wood(count: int, seed: int) -> list[np.ndarray]:
    """The hot folder's frames: synthetic wood at 128 px, rendered before any clock runs."""
    from zsad.data.synthetic import render_sample

    rng = np.random.default_rng(seed)
    return [render_sample("wood", rng, 128, None)[0] for _ in range(count)]


def _station(work: Path, stream: Any, source_factory: Any, overlays: bool) -> Any:
    from zsad.station.station import Station, StationOptions

    options = StationOptions(
        out=work / "out",
        overlays=overlays,
        status_interval_s=60.0,
        idle_exit_s=2.0,
        echo=lambda line: None,
    )
    return Station(stream, source_factory, options)


def _measure(
    station: Any,
    ready: Callable[[], bool],
    burst: Callable[[], None],
    frames: int,
    one: Callable[[int], None],
    triggers: int,
) -> dict[str, Any]:
    """Run ``station`` on a thread: the burst's pace, then ``triggers`` single-frame latencies."""
    ended: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: ended.update(station.run()), name="bench station", daemon=True
    )
    worker.start()
    try:
        _wait(lambda: getattr(station, "journal", None) is not None and ready(), worker, ended)
        started = time.perf_counter()
        burst()
        _wait(lambda: station.journal.count >= frames, worker, ended)
        seconds = time.perf_counter() - started
        latencies = []
        for number in range(triggers):
            count = station.journal.count
            started = time.perf_counter()
            one(number)
            _wait(lambda count=count: station.journal.count > count, worker, ended)
            latencies.append((time.perf_counter() - started) * 1e3)
    finally:
        worker.join(60)  # the station stops itself once idle (idle_exit_s)
    return {
        "frames": frames,
        "seconds": round(seconds, 2),
        "frames_per_s": round(frames / seconds, 2),
        "latency_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 1),
            "p99": round(float(np.percentile(latencies, 99)), 1),
        },
    }


def _wait(
    condition: Callable[[], bool],
    worker: threading.Thread,
    ended: dict[str, Any],
    timeout: float = 600,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if not worker.is_alive():
            raise ZsadError(
                f"bench station: the station stopped ({ended.get('stopped_by', 'on an error')}, "
                f"{ended.get('this_run')}) before the run was over"
            )
        if time.monotonic() > deadline:
            raise ZsadError(f"bench station: nothing happened for {timeout:g} s")
        time.sleep(0.001)


def _run_hot_folder(
    work: Path, stream: Any, images: list[np.ndarray], frames: int, overlays: bool
) -> dict[str, Any]:
    from PIL import Image

    from zsad.station.frames import HotFolder

    folder = work / "in"
    folder.mkdir()

    def drop(number: int) -> None:
        # Written aside and renamed in, as a camera writing a hot folder should.
        target = folder / f"{number:06d}.png"
        partial = target.with_name(target.name + ".part")
        Image.fromarray(images[number]).save(partial, format="PNG")
        partial.rename(target)

    for number in range(frames):
        drop(number)
    station = _station(
        work, stream, lambda done: HotFolder(folder, done, exclude=work / "out"), overlays
    )
    return _measure(
        station,
        lambda: True,
        lambda: None,
        frames,
        lambda number: drop(frames + number),
        len(images) - frames,
    )


def _run_camera(source: str, settings: dict[str, str]) -> Callable[..., dict[str, Any]]:
    def run(
        work: Path, stream: Any, images: list[np.ndarray], frames: int, overlays: bool
    ) -> dict[str, Any]:
        from zsad.station.camera import CameraConfig, CameraFeed

        config = CameraConfig(source, settings, "software", keep="none")
        feed = CameraFeed(config, work / "out", echo=lambda line: None)
        station = _station(work, stream, feed.start, overlays)
        try:
            return _measure(
                station,
                lambda: feed.camera is not None,
                lambda: [feed.trigger(None) for _ in range(frames)],
                frames,
                lambda number: feed.trigger(None),
                len(images) - frames,
            )
        finally:
            feed.close()

    return run


def _ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Camera over hot folder, per overlay setting: frames/s and latency p50/p99."""
    ratios = {}
    for overlays in (True, False):
        hot, camera = (r for r in rows if r["overlays"] == overlays)
        ratios[str(overlays)] = {
            "frames_per_s": round(camera["frames_per_s"] / hot["frames_per_s"], 2),
            "latency_p50": round(camera["latency_ms"]["p50"] / hot["latency_ms"]["p50"], 2),
            "latency_p99": round(camera["latency_ms"]["p99"] / hot["latency_ms"]["p99"], 2),
        }
    return ratios


def _markdown(
    env: dict[str, Any],
    config: dict[str, Any],
    rows: list[dict[str, Any]],
    ratios: dict[str, dict[str, float]],
) -> str:
    settings = " ".join(f"{k}={v}" for k, v in config["camera_settings"].items()) or "none"
    text = markdown_header("station --source", env) + (
        f"{config['method']}, bank {config['bank']}, {config['backend']} at "
        f"{config['image_size']} px; {config['frames']} frames at once, then "
        f"{config['triggers']} one at a time. Camera: `{config['source']}`, software trigger, "
        f"settings {settings}, frames not kept. Hot folder: 128 px wood PNGs, polled every "
        "0.2 s.\n\n"
        "| source | overlays | frames/s | trigger to record p50 ms | p99 ms |\n"
        "|---|---|---|---|---|\n"
    )
    for row in rows:
        name = HOT_FOLDER if row["source"] == HOT_FOLDER else "camera"
        text += (
            f"| {name} | {row['overlays']} | {row['frames_per_s']} | "
            f"{row['latency_ms']['p50']} | {row['latency_ms']['p99']} |\n"
        )
    text += "\n| camera / hot folder | frames/s | latency p50 | latency p99 |\n|---|---|---|---|\n"
    for overlays, ratio in ratios.items():
        text += (
            f"| overlays {overlays} | {ratio['frames_per_s']} | {ratio['latency_p50']} | "
            f"{ratio['latency_p99']} |\n"
        )
    return text
