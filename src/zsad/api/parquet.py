"""OUT/results.parquet: the rows of OUT/results.jsonl as one Parquet table (pyarrow), for
tools that read columns (pandas, Spark, DuckDB)."""

from __future__ import annotations

import json
from pathlib import Path

from zsad.api.results import RECORD_FIELDS, read_record
from zsad.errors import ZsadError
from zsad.formats.atomic import atomic_open


def results_to_parquet(out: Path) -> Path:
    """Write OUT/results.parquet from OUT/results.jsonl, a row per record, the columns in
    record order; returns its path."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ZsadError("--parquet needs pyarrow: pip install pyarrow (or 'zsad[ray]')") from None
    source = out / "results.jsonl"
    records = [
        read_record(json.loads(line), str(source)) for line in source.read_text().splitlines()
    ]
    table = pa.Table.from_pylist([{k: r[k] for k in RECORD_FIELDS} for r in records])
    target = out / "results.parquet"
    with atomic_open(target, "wb") as handle:
        pq.write_table(table, handle)
    return target
