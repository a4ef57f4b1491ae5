"""Detection commands: infer (score images), eval (metrics on a labelled dataset), demo."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from zsad.cli.common import (
    BatchOpt,
    BundleOpt,
    DeviceOpt,
    EngineOpt,
    ImageSizeOpt,
    MaybeImageSizeOpt,
    ModelOpt,
    PretrainedOpt,
    ProgressOpt,
    SeedOpt,
    WeightsOpt,
)
from zsad.cli.methods import (
    CalibrationOpt,
    EncoderChoice,
    JasROpt,
    MethodOpt,
    MethodSetup,
    TopKOpt,
    setup_method,
)
from zsad.cli.scoring_options import with_scoring_options
from zsad.cli.station_cmds import BankOpt, ThresholdOpt
from zsad.errors import ZsadError
from zsad.runtime.atomic import write_json
from zsad.scoring.pipeline import SetScoringConfig

OutOpt = Annotated[Path, typer.Option("--out", help="Output folder (created if missing).")]
OverlaysOpt = Annotated[
    bool, typer.Option("--overlays/--no-overlays", help="Write heatmap overlay PNGs.")
]


def _score_paths(
    paths: list[Path], setup: MethodSetup, batch_size: int, progress: bool
) -> tuple[Any, tuple[np.ndarray, np.ndarray, dict[str, Any]], dict[str, float]]:
    """Encode then score files; returns (encoded, (scores, maps, info), seconds per stage)."""
    from zsad.runtime.encode import encode_paths

    start = time.perf_counter()
    encoded = encode_paths(setup.backend, paths, batch_size=batch_size, progress=progress)
    for _, message in encoded.failures:
        typer.echo(f"zsad: skipped {message}", err=True)
    encoded_at = time.perf_counter()
    scored = setup.score(encoded)
    timing = {
        "encode_s": round(encoded_at - start, 3),
        "score_s": round(time.perf_counter() - encoded_at, 3),
    }
    return encoded, scored, timing


@with_scoring_options
def infer(
    images: Annotated[
        list[str] | None,
        typer.Argument(help="Images to score: folders, globs, files or .txt lists."),
    ] = None,
    out: OutOpt = Path("zsad-out"),
    method: MethodOpt = "staps",
    model: ModelOpt = "ViT-L-14-336",
    weights: WeightsOpt = None,
    pretrained: PretrainedOpt = "openai",
    image_size: MaybeImageSizeOpt = None,
    device: DeviceOpt = "auto",
    bundle: BundleOpt = None,
    engine: EngineOpt = None,
    calibration: CalibrationOpt = None,
    jas_r: JasROpt = None,
    top_k: TopKOpt = None,
    batch_size: BatchOpt = 8,
    overlays: OverlaysOpt = True,
    seed: SeedOpt = 0,
    progress: ProgressOpt = True,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="Read image paths from stdin, one per line, and score each as it arrives, "
            "like `zsad watch` (staps: rolling --bank, STAS off unless --stas, no BGMPS or "
            "--order; headclip: one by one). OUT is resumed.",
            rich_help_panel="Station",
        ),
    ] = False,
    bank: BankOpt = 32,
    threshold: ThresholdOpt = None,
    *,
    scoring: SetScoringConfig,
) -> None:
    """Score images for anomalies, zero-shot.

    staps/musc score the images against each other (at least 2; 50-200 of one product is
    typical); headclip scores each image on its own. Writes OUT/results.jsonl (one line per
    image: path, score, map, overlay, error), OUT/maps/*.npy (float16 pixel maps at the encoder
    size), OUT/overlays/*.png and OUT/summary.json. Unreadable files are reported and skipped.
    With --stream, paths come from stdin and results are appended as in `zsad watch`.
    """
    from zsad.data.datasets import read_folder

    if stream:
        if images:
            raise ZsadError("--stream reads image paths from stdin; give no IMAGES arguments")
        from zsad.cli.station_cmds import stream_paths

        stream_paths(
            EncoderChoice(model, weights, pretrained, image_size, device, bundle, engine),
            method,
            scoring,
            bank=bank,
            threshold=threshold,
            calibration=calibration,
            jas_r=jas_r,
            top_k=top_k,
            out=out,
            overlays=overlays,
        )
        return
    if not images:
        raise ZsadError("infer: give IMAGES to score (or --stream to read paths from stdin)")
    from zsad.runtime.atomic import write_jsonl
    from zsad.runtime.results import image_records

    paths = [s.path for s in read_folder(images)]
    choice = EncoderChoice(model, weights, pretrained, image_size, device, bundle, engine)
    setup = setup_method(
        method,
        choice,
        scoring,
        calibration=calibration,
        jas_r=jas_r,
        top_k=top_k,
        progress=progress,
    )
    encoded, (scores, maps, info), timing = _score_paths(paths, setup, batch_size, progress)
    records = image_records(
        out,
        paths,
        encoded.paths,
        scores,
        maps,
        encoded.failures,
        map_size=setup.backend.image_size,
        overlays=overlays,
        progress=progress,
    )
    write_jsonl(out / "results.jsonl", records)
    ranked = sorted((r for r in records if r["score"] is not None), key=lambda r: -r["score"])
    summary = {
        "images": len(paths),
        "scored": len(encoded.paths),
        "failed": len(encoded.failures),
        "encoder": str(bundle or engine or model),
        "backend": setup.backend.name,
        "image_size": setup.backend.image_size,
        "settings": setup.settings,
        "timing": timing,
        "most_anomalous": [{"path": r["path"], "score": r["score"]} for r in ranked[:10]],
        "info": info,
    }
    write_json(out / "summary.json", summary)
    typer.echo(f"scored {len(encoded.paths)} of {len(paths)} images -> {out / 'results.jsonl'}")


def _category_metrics(
    samples: list[Any], encoded: Any, scores: np.ndarray, maps: np.ndarray, size: int
) -> dict[str, dict[str, float]]:
    from zsad.data.images import load_mask
    from zsad.metrics import image_metrics, pixel_metrics
    from zsad.scoring.maps import upsample_maps

    by_path = {s.path: s for s in samples}
    kept = [by_path[p] for p in encoded.paths]
    labels = np.array([s.label for s in kept])
    masks = np.zeros((len(kept), size, size), dtype=bool)
    for i, sample in enumerate(kept):
        if sample.label == 1 and sample.mask_path is not None:
            masks[i] = load_mask(sample.mask_path, size=(size, size))
    pixel_maps = maps if maps.shape[-2:] == (size, size) else upsample_maps(maps, size)
    return {"image": image_metrics(labels, scores), "pixel": pixel_metrics(masks, pixel_maps)}


def _mean_metrics(per_category: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    levels: dict[str, dict[str, float]] = {}
    for level in ("image", "pixel"):
        keys = next(iter(per_category.values()))[level].keys()
        levels[level] = {
            key: float(np.nanmean([m[level][key] for m in per_category.values()])) for key in keys
        }
    return levels


def _markdown(per_category: dict[str, Any], mean: dict[str, Any]) -> str:
    rows = {**per_category, "**mean**": mean}
    image_keys = list(mean["image"])
    pixel_keys = list(mean["pixel"])
    header = ["category"] + [f"image {k}" for k in image_keys] + [f"pixel {k}" for k in pixel_keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in rows.items():
        cells = [f"{100 * m['image'][k]:.1f}" for k in image_keys]
        cells += [f"{100 * m['pixel'][k]:.1f}" for k in pixel_keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@with_scoring_options
def evaluate(
    root: Annotated[Path, typer.Argument(help="Dataset root (MVTec layout: CATEGORY/test/...).")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset layout: mvtec.")] = "mvtec",
    categories: Annotated[
        str | None, typer.Option("--categories", help="Comma-separated categories (default: all).")
    ] = None,
    out: OutOpt = Path("zsad-eval"),
    method: MethodOpt = "staps",
    model: ModelOpt = "ViT-L-14-336",
    weights: WeightsOpt = None,
    pretrained: PretrainedOpt = "openai",
    image_size: MaybeImageSizeOpt = None,
    device: DeviceOpt = "auto",
    bundle: BundleOpt = None,
    engine: EngineOpt = None,
    calibration: CalibrationOpt = None,
    jas_r: JasROpt = None,
    top_k: TopKOpt = None,
    batch_size: BatchOpt = 8,
    overlays: OverlaysOpt = False,
    seed: SeedOpt = 0,
    progress: ProgressOpt = True,
    *,
    scoring: SetScoringConfig,
) -> None:
    """Evaluate on a labelled dataset: per-category and mean image/pixel metrics.

    staps/musc score each category's test images as one unlabeled set (zero-shot); headclip
    scores each image on its own. Writes OUT/metrics.json, OUT/metrics.md and
    OUT/CATEGORY/results.jsonl (+ maps, overlays with --overlays).
    """
    if dataset != "mvtec":
        raise ZsadError(f"--dataset {dataset!r}: supported layouts: mvtec")
    choice = EncoderChoice(model, weights, pretrained, image_size, device, bundle, engine)
    setup = setup_method(
        method,
        choice,
        scoring,
        calibration=calibration,
        jas_r=jas_r,
        top_k=top_k,
        progress=progress,
    )
    names = categories.split(",") if categories else None
    run_eval(root, names, out, setup, batch_size, overlays, progress)


def run_eval(
    root: Path,
    categories: list[str] | None,
    out: Path,
    setup: MethodSetup,
    batch_size: int,
    overlays: bool,
    progress: bool,
) -> dict[str, Any]:
    """Score each MVTec-layout category and write metrics.json and metrics.md."""
    from zsad.data.datasets import read_mvtec
    from zsad.runtime.atomic import write_jsonl
    from zsad.runtime.results import image_records

    samples = read_mvtec(root, categories)
    size = setup.backend.image_size
    per_category: dict[str, Any] = {}
    timing: dict[str, Any] = {}
    for category in sorted({s.category for s in samples}):
        subset = [s for s in samples if s.category == category]
        paths = [s.path for s in subset]
        encoded, (scores, maps, _), timing[category] = _score_paths(
            paths, setup, batch_size, progress
        )
        per_category[category] = _category_metrics(subset, encoded, scores, maps, size)
        records = image_records(
            out / category,
            paths,
            encoded.paths,
            scores,
            maps,
            encoded.failures,
            map_size=size,
            overlays=overlays,
        )
        write_jsonl(out / category / "results.jsonl", records)
        auroc = per_category[category]["image"]["auroc"]
        typer.echo(f"{category}: image AUROC {100 * auroc:.1f}", err=True)
    mean = _mean_metrics(per_category)
    payload = {
        "categories": per_category,
        "mean": mean,
        "backend": setup.backend.name,
        "image_size": size,
        "settings": setup.settings,
        "timing": timing,
    }
    write_json(out / "metrics.json", payload)
    table = _markdown(per_category, mean)
    (out / "metrics.md").write_text(table)
    typer.echo(table)
    return payload


def demo(
    out: OutOpt = Path("zsad-demo"),
    image_size: ImageSizeOpt = 224,
    seed: SeedOpt = 0,
) -> None:
    """Generate a small synthetic defect dataset and evaluate STAPS on it with zsad-tiny.

    Nothing is downloaded: the encoder is the seeded random 'zsad-tiny' model. Look at
    OUT/eval/CATEGORY/overlays/*.png for the heatmaps and OUT/eval/metrics.md for the table.
    """
    from zsad.data.synthetic import make_dataset

    data = out / "data"
    written = make_dataset(data, seed=seed)
    typer.echo(f"generated {', '.join(written)} in {data}", err=True)
    choice = EncoderChoice("zsad-tiny", None, "random", image_size, "auto", None, None)
    setup = setup_method("staps", choice, SetScoringConfig(seed=seed), progress=True)
    run_eval(data, None, out / "eval", setup, 8, True, True)


def register(app: typer.Typer) -> None:
    """Attach these commands to the app."""
    app.command("infer")(infer)
    app.command("eval")(evaluate)
    app.command("demo")(demo)
