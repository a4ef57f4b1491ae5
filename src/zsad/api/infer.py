"""Score a set of image files into a results folder: what `zsad infer` writes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from zsad.api.detector import Detector
from zsad.api.records import write_set
from zsad.errors import echo_stderr
from zsad.formats.atomic import write_json, write_jsonl
from zsad.scoring.aligned import alignment_report


def infer_to_folder(
    detector: Detector,
    paths: Sequence[Path],
    out: Path,
    *,
    batch_size: int = 8,
    overlays: bool = True,
    echo: Callable[[str], None] = echo_stderr,
) -> dict[str, Any]:
    """Score ``paths`` as one set and write OUT/results.jsonl, maps, overlays and summary.json;
    returns the summary."""
    scored = detector.score_set(paths, batch_size=batch_size)
    for failure in scored.failures:
        echo(f"zsad: skipped {failure.error}")
    for note in detector.notes:
        echo(f"zsad: {note}")
    if "alignment" in scored.info:
        echo(f"zsad: {alignment_report(scored.info['alignment'])}")
    records = write_set(out, scored, paths, overlays=overlays, progress=detector.progress)
    write_jsonl(out / "results.jsonl", records)
    ranked = sorted(scored.scored, key=lambda r: -(r.score or 0.0))
    summary = {
        "images": len(paths),
        "scored": len(scored.scored),
        "failed": len(scored.failures),
        "encoder": detector.source,
        "backend": detector.backend.name,
        "image_size": detector.image_size,
        "settings": detector.settings,
        "timing": scored.timing,
        "most_anomalous": [{"path": r.path, "score": r.score} for r in ranked[:10]],
        "info": scored.info,
    }
    write_json(out / "summary.json", summary)
    return summary
