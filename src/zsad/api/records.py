"""Write a scored set: results.jsonl records, float16 maps and heatmap overlays, all atomic."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from zsad.api.overlay import OVERLAY_MAX_SIDE, save_overlay
from zsad.api.results import Result, SetResult
from zsad.data.images import ImageInput, ImageLoadError, as_rgb_array
from zsad.formats.atomic import save_npy


def safe_stem(index: int, path: str | Path | None) -> str:
    """A unique, filesystem-safe name for the i-th image (stems repeat across defect folders)."""
    stem = "image" if path is None else Path(path).stem
    return f"{index:05d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', stem)[:80]}"


def save_result_files(
    out_dir: Path,
    index: int,
    result: Result,
    image: ImageInput | None,
    span: tuple[float, float] | None,
) -> dict[str, str | None]:
    """Write one result's map (.npy, float16) and, when ``span`` is given, its overlay."""
    name = safe_stem(index, result.path)
    pixel_map = result.anomaly_map  # upsampled on each access: take it once
    assert pixel_map is not None
    map_file = out_dir / "maps" / f"{name}.npy"
    save_npy(map_file, pixel_map.astype(np.float16))
    overlay = None if span is None else _overlay(out_dir, name, image, result, span)
    return {"map": str(map_file.relative_to(out_dir)), "overlay": overlay}


def write_set(
    out_dir: Path,
    scored: SetResult,
    images: Sequence[ImageInput],
    *,
    overlays: bool = True,
    progress: bool = False,
    first_id: int = 0,
) -> list[dict[str, Any]]:
    """Save each scored image's map and overlay (``images`` indexed by each result's input
    position); returns one results.jsonl record per result, numbered on from ``first_id``."""
    span = scored.map_range() if overlays else None
    records: list[dict[str, Any]] = []
    for line, result in enumerate(
        tqdm(scored.results, desc="writing", unit="img", disable=not progress, leave=False),
        start=first_id,
    ):
        index = line - first_id if result.index is None else result.index
        files = (
            {} if not result.ok else save_result_files(out_dir, index, result, images[index], span)
        )
        records.append({"id": line, **result.to_record(**files)})
    return records


def _overlay(
    out_dir: Path, name: str, image: ImageInput | None, result: Result, span: tuple[float, float]
) -> str | None:
    source = image if image is not None else result.path
    try:
        # A file is decoded at the overlay's size: a huge frame is never held at full size here.
        pixels = as_rgb_array(source, OVERLAY_MAX_SIDE)  # type: ignore[arg-type]
    except ImageLoadError:
        return None  # the file changed after encoding; its score and map are still valid
    overlay_file = out_dir / "overlays" / f"{name}.png"
    assert result.patch_map is not None
    save_overlay(overlay_file, pixels, result.patch_map, *span, score=result.score)
    return str(overlay_file.relative_to(out_dir))
