"""Evaluate a Detector on a labelled dataset: per-category and mean metrics (JSON, Markdown)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from zsad.api.detector import Detector
from zsad.api.records import write_set
from zsad.api.results import SetResult
from zsad.data.datasets import Sample
from zsad.formats.atomic import write_json, write_jsonl, write_text


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def category_metrics(samples: list[Sample], scored: SetResult, size: int) -> dict[str, Any]:
    """Image metrics, and pixel metrics where masks exist, over the scored samples."""
    from zsad.data.images import load_mask
    from zsad.evaluation.metrics import image_metrics, pixel_metrics

    kept = [(s, r) for s, r in zip(samples, scored.results, strict=True) if r.ok]
    labels = np.array([s.label for s, _ in kept])
    masks = np.zeros((len(kept), size, size), dtype=bool)
    for i, (sample, _) in enumerate(kept):
        if sample.label == 1 and sample.mask_path is not None:
            masks[i] = load_mask(sample.mask_path, size=(size, size))
    maps = np.stack([r.anomaly_map for _, r in kept])
    return {"image": image_metrics(labels, scored.scores), "pixel": pixel_metrics(masks, maps)}


def mean_metrics(per_category: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """The mean of each metric over the categories."""
    levels: dict[str, dict[str, float]] = {}
    for level in ("image", "pixel"):
        keys = next(iter(per_category.values()))[level].keys()
        levels[level] = {
            key: float(np.nanmean([m[level][key] for m in per_category.values()])) for key in keys
        }
    return levels


def markdown_table(per_category: dict[str, Any], mean: dict[str, Any]) -> str:
    """The metrics as a Markdown table, in percent, with the mean as the last row."""
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


def evaluate(
    detector: Detector,
    samples: list[Sample],
    out: Path,
    *,
    batch_size: int = 8,
    overlays: bool = False,
    progress: bool = False,
    echo: Callable[[str], None] = _stderr,
) -> dict[str, Any]:
    """Score each category as one set and write OUT/metrics.json, OUT/metrics.md and
    OUT/CATEGORY/results.jsonl (+ maps, overlays); returns the metrics.json content."""
    per_category: dict[str, Any] = {}
    timing: dict[str, Any] = {}
    for category in sorted({s.category for s in samples}):
        subset = [s for s in samples if s.category == category]
        paths = [s.path for s in subset]
        scored = detector.score_set(paths, batch_size=batch_size, progress=progress)
        for failure in scored.failures:
            echo(f"zsad: skipped {failure.error}")
        timing[category] = scored.timing
        per_category[category] = category_metrics(subset, scored, detector.image_size)
        records = write_set(out / category, scored, paths, overlays=overlays)
        write_jsonl(out / category / "results.jsonl", records)
        auroc = per_category[category]["image"]["auroc"]
        echo(f"{category}: image AUROC {100 * auroc:.1f}")
    mean = mean_metrics(per_category)
    payload = {
        "categories": per_category,
        "mean": mean,
        "backend": detector.backend.name,
        "image_size": detector.image_size,
        "settings": detector.settings,
        "timing": timing,
    }
    write_json(out / "metrics.json", payload)
    write_text(out / "metrics.md", markdown_table(per_category, mean))
    return payload
