"""Write per-image results: results.jsonl, raw maps, heatmap overlays, all written atomically."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from zsad.data.images import ImageLoadError, load_image
from zsad.runtime.atomic import save_npy
from zsad.runtime.overlay import save_overlay
from zsad.scoring.maps import upsample_maps


def safe_stem(index: int, path: Path) -> str:
    """A unique, filesystem-safe name for the i-th image (stems repeat across defect folders)."""
    return f"{index:05d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', path.stem)[:80]}"


def image_records(
    out_dir: Path,
    all_paths: Sequence[Path],
    scored_paths: Sequence[Path],
    scores: np.ndarray,
    patch_maps: np.ndarray,
    failures: Sequence[tuple[Path, str]],
    *,
    map_size: int,
    overlays: bool = True,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Save each scored image's map (.npy, float16) and overlay (.png); one record per input."""
    errors = {Path(p): message for p, message in failures}
    position = {Path(p): i for i, p in enumerate(scored_paths)}
    vmin, vmax = float(patch_maps.min()), float(patch_maps.max())
    records: list[dict[str, Any]] = []
    for index, path in enumerate(
        tqdm(all_paths, desc="writing", unit="img", disable=not progress, leave=False)
    ):
        path = Path(path)
        record: dict[str, Any] = {"path": str(path), "score": None, "map": None, "error": None}
        if path in position:
            i = position[path]
            name = safe_stem(index, path)
            pixel_map = upsample_maps(patch_maps[i : i + 1], map_size)[0]
            map_file = out_dir / "maps" / f"{name}.npy"
            save_npy(map_file, pixel_map.astype(np.float16))
            record.update(score=float(scores[i]), map=str(map_file.relative_to(out_dir)))
            if overlays:
                record["overlay"] = _write_overlay(out_dir, name, path, patch_maps[i], vmin, vmax)
        else:
            record["error"] = errors.get(path, "not scored")
        records.append(record)
    return records


def _write_overlay(
    out_dir: Path, name: str, path: Path, patch_map: np.ndarray, vmin: float, vmax: float
) -> str | None:
    try:
        image = load_image(path)
    except ImageLoadError:
        return None  # the file changed after encoding; its score and map are still valid
    overlay_file = out_dir / "overlays" / f"{name}.png"
    save_overlay(overlay_file, image, patch_map, vmin, vmax)
    return str(overlay_file.relative_to(out_dir))
