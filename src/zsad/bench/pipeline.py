"""`zsad bench pipeline`: end-to-end images/s and the time of each stage, per method."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from zsad.api.overlay import save_overlay
from zsad.arrays import array_module, module_of
from zsad.bench import measure as bm
from zsad.bench import plots as bp
from zsad.bench.backends import (
    BACKENDS,
    bundle_backend,
    check_device,
    load_backbone,
    torch_backend,
)
from zsad.bench.report import resolve_device, say, write_report
from zsad.data.images import load_image
from zsad.data.synthetic import make_dataset
from zsad.errors import ZsadError
from zsad.formats.atomic import save_npy
from zsad.formats.backbones import get_arch
from zsad.formats.methods import METHODS
from zsad.runtime.preprocess import preprocess_image
from zsad.scoring.headclip import score_headclip
from zsad.scoring.maps import upsample_maps
from zsad.scoring.pipeline import SetScoringConfig, score_set

STAGES = ("decode", "preprocess", "encoder", "scoring", "writing")
Scorer = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


def bench_pipeline(
    out: Path,
    *,
    backend: str = "torch-fp32",
    model: str = "ViT-L-14-336",
    weights: Path | None = None,
    pretrained: str = "random",
    bundle: Path | None = None,
    image_size: int = 518,
    device: str = "auto",
    n: int = 200,
    headclip_n: int = 16,
    headclip_batches: tuple[int, ...] | list[int] = (1, 8),
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Time STAPS over N images and HeadCLIP at each batch; writes bench.json, bench.md, a plot."""
    names = backend.split(",")
    unknown = [name for name in names if name not in BACKENDS]
    if unknown:
        raise ZsadError(f"--backend {','.join(unknown)}: choose from {', '.join(BACKENDS)}")
    dev = resolve_device(device)
    env = bm.environment(dev)
    scoring = SetScoringConfig(method="staps", seed=seed)
    gpu_scoring = array_module(scoring.device) is not np
    rows: list[dict[str, Any]] = []
    outputs_on: dict[str, str] = {}
    sizes = set()
    with tempfile.TemporaryDirectory(prefix="zsad-bench-") as tmp:
        for name in names:  # one after another on the same images, so their rows compare
            encoders = _encoders(
                name, model, weights, pretrained, image_size, dev, bundle, gpu_scoring
            )
            try:
                size = next(iter(encoders.values())).image_size
                sizes.add(size)
                count = max(
                    n if "staps" in encoders else 0, headclip_n if "headclip" in encoders else 0
                )
                work = Path(tmp) / name
                paths = _synthetic_paths(work / "data", count, 256, seed)
                if "staps" in encoders:
                    runner = encoders["staps"]
                    score = _staps_scorer(scoring, size)
                    stages = _stages(runner, paths[:n], batch_size, score, work / "staps")
                    rows.append(_row("staps", runner.name, n, batch_size, stages))
                if "headclip" in encoders:
                    runner = encoders["headclip"]
                    score = _headclip_scorer(size, seed)
                    for b in headclip_batches:
                        folder = work / f"headclip{b}"
                        stages = _stages(runner, paths[:headclip_n], b, score, folder)
                        rows.append(_row("headclip", runner.name, headclip_n, b, stages))
                # STAPS with a bundle and GPU scoring: the taps stay on the GPU throughout.
                outputs_on.update(
                    {e.name: getattr(e, "outputs_on", "host") for e in encoders.values()}
                )
            finally:
                # Only here: the torch-* encoders share one CLIP, which close() moves off the GPU.
                for encoder in encoders.values():
                    encoder.close()
    config = {
        "backend": backend,
        "model": model if backend.startswith("torch") else None,
        "bundle": None if bundle is None else str(bundle),
        "pretrained": pretrained,
        "image_size": sizes.pop() if len(sizes) == 1 else sorted(sizes),
        "n": n,
        "headclip_n": headclip_n,
        "headclip_batch": list(headclip_batches),
        "staps_batch": batch_size,
        "scoring_device": "gpu" if gpu_scoring else "cpu",
        "outputs_on": outputs_on,
    }
    cols = ["method", "runner", "images", "batch", "images_per_s", "total_s", *STAGES]
    md = bm.markdown_table(rows, cols)
    return write_report(out, "pipeline", env, config, {"rows": rows}, md, [_plot(out, rows)])


def _encoders(
    backend: str,
    model: str,
    weights: Path | None,
    pretrained: str,
    image_size: int,
    device: str,
    bundle: Path | None,
    gpu_scoring: bool,
) -> dict[str, Any]:
    """The encoder backend per method: both from one CLIP for torch-* (STAPS alone for a DINO
    backbone, which has no text tower), else the bundle's one (its outputs on the GPU when
    STAPS scores there)."""
    check_device(backend, device)
    if backend.startswith("torch"):
        loaded = load_backbone(model, weights, pretrained)
        names = ("staps",) if get_arch(model) is not None else ("staps", "headclip")
        return {
            name: torch_backend(loaded, backend, image_size, device, METHODS[name].outputs)
            for name in names
        }
    runner = bundle_backend(backend, bundle, device, gpu_scoring)  # explains a missing --bundle
    return {runner.bundle.method: runner}


def _staps_scorer(config: Any, image_size: int) -> Scorer:
    def score(o: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        result = score_set(o["taps"], o["cls"], config, image_size=image_size)
        return result.image_scores, result.patch_maps

    return score


def _headclip_scorer(image_size: int, seed: int) -> Scorer:
    # Random prompts time exactly like calibrated ones; their width is the CLS width.
    prompts: dict[int, np.ndarray] = {}

    def score(o: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        width = o["cls"].shape[1]
        if width not in prompts:
            text = np.random.default_rng(seed).standard_normal((2, width))
            unit = text / np.linalg.norm(text, axis=1, keepdims=True)
            prompts[width] = unit.astype(np.float32)
        return score_headclip(o["cls"], o["local"], prompts[width], image_size=image_size)

    return score


def _synthetic_paths(root: Path, count: int, size: int, seed: int) -> list[Path]:
    make_dataset(
        root, seed=seed, categories=["grid"], n_train=count, n_good=1, n_defect=0, size=size
    )
    return sorted((root / "grid" / "train" / "good").glob("*.png"))[:count]


def _encode(backend: Any, pixels: np.ndarray, batch: int) -> dict[str, Any]:
    parts = [backend.run(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
    return {k: module_of(parts[0][k]).concatenate([p[k] for p in parts]) for k in parts[0]}


def _stages(
    backend: Any, paths: list[Path], batch: int, score: Scorer, out: Path
) -> dict[str, float]:
    """Per-stage seconds: decode, preprocess, encoder, scoring, writing."""
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
    score(_encode(backend, pixels[: max(2, batch)], batch))
    start = time.perf_counter()
    outputs = _encode(backend, pixels, batch)
    t["encoder"] = time.perf_counter() - start
    start = time.perf_counter()
    _, maps = score(outputs)
    t["scoring"] = time.perf_counter() - start
    start = time.perf_counter()
    _write_results(out, paths, maps, backend.image_size)
    t["writing"] = time.perf_counter() - start
    return {k: round(v, 4) for k, v in t.items()}


def _write_results(out: Path, paths: list[Path], patch_maps: np.ndarray, map_size: int) -> None:
    """What `zsad detect` writes per image: the float16 pixel map and the heatmap overlay."""
    vmin, vmax = float(patch_maps.min()), float(patch_maps.max())
    for i, path in enumerate(paths):
        name = f"{i:05d}_{path.stem}"
        pixel_map = upsample_maps(patch_maps[i : i + 1], map_size)[0]
        save_npy(out / "maps" / f"{name}.npy", pixel_map.astype(np.float16))
        # Decoded again, as detect's writer does: the stage times what a real run pays.
        image = load_image(path)
        save_overlay(out / "overlays" / f"{name}.png", image, patch_maps[i], vmin, vmax)


def _plot(out: Path, rows: list[dict[str, Any]]) -> Path:
    bars = {
        f"{r['method']}, {r['images']} images, batch {r['batch']}": {
            stage: r[stage] / r["images"] * 1e3 for stage in STAGES
        }
        for r in rows
    }
    return bp.stacked_bars(
        out / "stages.png", bars, title="End-to-end time per image by stage", xlabel="ms per image"
    )


def _row(
    method: str, runner: str, images: int, batch: int, stages: dict[str, float]
) -> dict[str, Any]:
    total = sum(stages.values())
    say(f"{method} batch {batch}: {images / total:.2f} img/s")
    return {
        "method": method,
        "runner": runner,
        "images": images,
        "batch": batch,
        "images_per_s": round(images / total, 3),
        "total_s": round(total, 4),
        **stages,
    }
