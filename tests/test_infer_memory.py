"""`zsad infer` holds one subset at a time: its memory does not grow with the number of images."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from zsad.api.detector import Detector
from zsad.api.infer import _ranking, infer_to_folder
from zsad.api.subsets import SubsetRequest
from zsad.bench.scale import generate_pool

# Bytes per image a run may add to its traced peak beyond its fixed cost: the paths, content
# keys, names and split of the plan come to about 0.3 KB. Keeping every record in memory added
# 1.4 KB, keeping every map or the taps of the whole set far more.
METADATA_BYTES_PER_IMAGE = 800


def _traced_peak(detector: Detector, paths: list[Path], out: Path) -> int:
    out.mkdir()
    tracemalloc.start()
    try:
        infer_to_folder(
            detector, paths, out, overlays=False, subsets=SubsetRequest(size=20), echo=str
        )
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_infer_peak_memory_grows_by_metadata_only(bundle: Path, tmp_path: Path) -> None:
    paths = generate_pool(tmp_path / "images", 400)
    with Detector.from_bundle(bundle, device="cpu") as detector:
        # The first run pays for one-time caches (the session, imports); it is not compared.
        _traced_peak(detector, paths[:20], tmp_path / "warm")
        small = _traced_peak(detector, paths[:40], tmp_path / "small")
        large = _traced_peak(detector, paths, tmp_path / "large")
    per_image = (large - small) / (len(paths) - 40)
    assert per_image < METADATA_BYTES_PER_IMAGE, f"{per_image:.0f} bytes per image"
    assert len((tmp_path / "large" / "results.jsonl").read_text().splitlines()) == len(paths)


def test_summary_ranks_the_ten_highest_with_ties_in_record_order() -> None:
    records = [{"error": None, "score": float(i % 4), "path": str(i)} for i in range(30)]
    records[3] = {"error": "unreadable", "score": None, "path": "3"}
    scored, failed, top = _ranking(iter(records))
    assert (scored, failed) == (29, 1)
    assert [r["path"] for r in top] == ["7", "11", "15", "19", "23", "27", "2", "6", "10", "14"]
