"""Evaluate a Detector on a labelled dataset: per-category and mean metrics (JSON, Markdown)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from zsad.api.detector import Detector
from zsad.api.records import write_set
from zsad.api.results import SetResult
from zsad.api.subsets import SubsetRequest
from zsad.data.datasets import Sample, read_labelled_folder, read_mvtec
from zsad.data.images import load_mask
from zsad.errors import ZsadError, echo_stderr
from zsad.evaluation.metrics import image_metrics, pixel_metrics
from zsad.formats.atomic import write_jsonl, write_text

LEVELS: tuple[str, ...] = ("image", "pixel")


def category_metrics(samples: list[Sample], scored: SetResult, size: int) -> dict[str, Any]:
    """Image metrics, plus pixel metrics when the samples have masks, over the scored samples."""
    kept = [(s, r) for s, r in zip(samples, scored.results, strict=True) if r.ok]
    labels = np.array([s.label for s, _ in kept])
    metrics: dict[str, Any] = {"image": image_metrics(labels, scored.scores)}
    # Image-level labels alone (a folder + CSV) say nothing about pixels: no pixel block at all.
    if any(sample.mask_path is not None for sample in samples):
        masks = np.zeros((len(kept), size, size), dtype=bool)
        for i, (sample, _) in enumerate(kept):
            if sample.label == 1 and sample.mask_path is not None:
                masks[i] = load_mask(sample.mask_path, size=(size, size))
        maps = np.stack([r.anomaly_map for _, r in kept])
        metrics["pixel"] = pixel_metrics(masks, maps)
    if "alignment" in scored.info:
        # With --align-window: how well this category's images suit the window.
        metrics["alignment"] = scored.info["alignment"]
    return metrics


def mean_metrics(per_category: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The mean of each metric over the categories that have it; undefined values are skipped,
    and a metric no category defines is None."""
    levels: dict[str, dict[str, float | None]] = {}
    for level in LEVELS:
        blocks = [m[level] for m in per_category.values() if level in m]
        if not blocks:
            continue
        keys = list(dict.fromkeys(key for block in blocks for key in block))
        levels[level] = {}
        for key in keys:
            values = [_finite(block.get(key)) for block in blocks]
            defined = [v for v in values if v is not None]
            levels[level][key] = sum(defined) / len(defined) if defined else None
    return levels


def json_safe(value: Any) -> Any:
    """``value`` with NaN/infinite floats (undefined metrics) as None, so JSON stays valid."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, float | np.floating):
        return _finite(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def markdown_table(per_category: dict[str, Any], mean: dict[str, Any]) -> str:
    """The metrics as a Markdown table, in percent, with the mean as the last row; undefined
    values show as n/a and levels no category has (pixel without masks) have no columns."""
    rows = {**per_category, "**mean**": mean}
    columns = [(level, key) for level in LEVELS for key in mean.get(level, {})]
    header = ["category"] + [f"{level} {key}" for level, key in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in rows.items():
        cells = [_percent(m.get(level, {}).get(key)) for level, key in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _finite(value: Any) -> float | None:
    """A metric value as a float, or None when it is missing or undefined (NaN, infinite)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _percent(value: Any) -> str:
    """A metric in percent with one decimal, or n/a when undefined."""
    number = _finite(value)
    return "n/a" if number is None else f"{100 * number:.1f}"


def evaluate(
    detector: Detector,
    samples: list[Sample],
    out: Path,
    *,
    batch_size: int = 8,
    overlays: bool = False,
    progress: bool = False,
    subsets: SubsetRequest | None = None,
    echo: Callable[[str], None] = echo_stderr,
) -> dict[str, Any]:
    """Score each category as one set (or in ``subsets``, each holding its share of every
    defect type) and write OUT/metrics.json, OUT/metrics.md and
    OUT/CATEGORY/results.jsonl (+ maps, overlays); returns the metrics.json content, in which
    undefined metrics are None (null), pixel metrics exist only for categories with masks, and
    images that could not be read are listed under their category's ``excluded`` and counted
    in the top-level ``excluded``."""
    per_category: dict[str, Any] = {}
    timing: dict[str, Any] = {}
    excluded = 0
    for category in sorted({s.category for s in samples}):
        subset = [s for s in samples if s.category == category]
        paths = [s.path for s in subset]
        split = subsets or SubsetRequest()
        scored = detector.score_set(
            paths,
            batch_size=batch_size,
            progress=progress,
            subset_size=split.size,
            divide=split.divide,
            strata=[s.defect or str(s.label) for s in subset],
            memory_gb=split.memory_gb,
        )
        for failure in scored.failures:
            echo(f"zsad: skipped {failure.error}")
        timing[category] = scored.timing
        per_category[category] = category_metrics(subset, scored, detector.image_size)
        if scored.failures:
            # Metrics over fewer images than labelled must say so where they are read.
            per_category[category]["excluded"] = [
                {"path": r.path, "error": r.error} for r in scored.failures
            ]
            excluded += len(scored.failures)
        records = write_set(out / category, scored, paths, overlays=overlays)
        write_jsonl(out / category / "results.jsonl", records)
        auroc = per_category[category]["image"]["auroc"]
        echo(f"{category}: image AUROC {_percent(auroc)}")
    mean = mean_metrics(per_category)
    payload = json_safe(
        {
            "categories": per_category,
            "mean": mean,
            "backend": detector.backend.name,
            "image_size": detector.image_size,
            "settings": detector.settings,
            "timing": timing,
            "excluded": excluded,
        }
    )
    # allow_nan=False: a non-finite value that slipped past json_safe fails here, not in a reader.
    write_text(out / "metrics.json", json.dumps(payload, indent=2, allow_nan=False) + "\n")
    table = markdown_table(payload["categories"], payload["mean"])
    if excluded:
        note = (
            "1 labelled image could not be read and is"
            if excluded == 1
            else f"{excluded} labelled images could not be read and are"
        ) + " left out of these metrics"
        echo(f"zsad: {note} (listed in {out / 'metrics.json'} under each category's excluded)")
        table += f"\n{note} (listed in metrics.json).\n"
    write_text(out / "metrics.md", table)
    return payload


def dataset_samples(
    root: Path,
    dataset: str,
    categories: str | None,
    labels: Path | None,
    file_column: str | None,
    label_column: str | None,
) -> list[Sample]:
    """The samples of an MVTec-layout root, or of a folder with an image-level label CSV, after
    checking that the options fit the layout."""
    if dataset == "mvtec":
        for given, name in ((labels, "--labels"), (file_column, "--file-column"),
                            (label_column, "--label-column")):  # fmt: skip
            if given is not None:
                raise ZsadError(f"{name}: only with --dataset folder (image-level label CSV)")
        return read_mvtec(root, categories.split(",") if categories else None)
    if labels is None:
        raise ZsadError("--dataset folder: needs --labels CSV (the images' labels)")
    if categories:
        raise ZsadError("--categories: only with --dataset mvtec")
    samples = read_labelled_folder(root, labels, file_column=file_column, label_column=label_column)
    category = root.resolve().name or "images"
    return [replace(sample, category=category) for sample in samples]
