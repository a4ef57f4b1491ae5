"""OUT/results.parquet from OUT/results.jsonl: the same rows, written group by group."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from zsad.api.parquet import results_to_parquet
from zsad.api.results import RECORD_FIELDS, read_record
from zsad.errors import ZsadError


def _record(index: int) -> dict:
    # The first records carry nulls where later ones carry values: a type found only later.
    late = index >= 3
    return {
        "schema": 2,
        "index": index,
        "path": f"images/{index:03d}.png",
        "score": 0.1 * index if index != 1 else None,
        "decision": ("NG" if late else None),
        "error": ("decode failed" if index == 4 else None),
        "timing": ({"encode_ms": 1.5 * index, "score_ms": 2.0} if late else None),
    }


def test_rows_equal_the_records_in_row_groups_of_bounded_size(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr("zsad.api.parquet._BATCH_ROWS", 2)
    records = [_record(i) for i in range(6)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    target = results_to_parquet(tmp_path)
    parquet = pq.ParquetFile(target)
    assert parquet.metadata.num_row_groups == 3
    assert parquet.schema_arrow.names == list(RECORD_FIELDS)
    assert parquet.read().to_pylist() == [
        {k: read_record(r)[k] for k in RECORD_FIELDS} for r in records
    ]


def test_an_empty_run_gives_an_empty_table(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text("")
    assert pq.read_table(results_to_parquet(tmp_path)).num_rows == 0


def test_a_record_from_a_newer_zsad_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text(json.dumps({"schema": 99, "path": "a.png"}) + "\n")
    with pytest.raises(ZsadError, match="results.jsonl: record schema 99 is newer"):
        results_to_parquet(tmp_path)
    assert not (tmp_path / "results.parquet").exists()
