"""OUT/results.parquet: the rows of OUT/results.jsonl as one Parquet table (pyarrow), for
tools that read columns (pandas, Spark, DuckDB), written in row groups so that a run of any
length is converted in the memory of one group."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zsad.api.results import RECORD_FIELDS, read_record
from zsad.errors import ZsadError
from zsad.formats.atomic import atomic_open

# Records per row group: a few MB of Python objects at a time.
_BATCH_ROWS = 10_000


def _batches(source: Path) -> Iterator[list[dict[str, Any]]]:
    """The records of ``source`` in lists of at most _BATCH_ROWS, each in record order."""
    batch: list[dict[str, Any]] = []
    with source.open() as lines:
        for line in lines:
            record = read_record(json.loads(line), str(source))
            batch.append({k: record[k] for k in RECORD_FIELDS})
            if len(batch) == _BATCH_ROWS:
                yield batch
                batch = []
    if batch:
        yield batch


def results_to_parquet(out: Path) -> Path:
    """Write OUT/results.parquet from OUT/results.jsonl, a row per record, the columns in
    record order; returns its path."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ZsadError("--parquet needs pyarrow: pip install pyarrow (or 'zsad[ray]')") from None
    source = out / "results.jsonl"
    # Two passes: a column that is null in one group and a string in another (an error, a
    # decision) gets the type of its values in every group.
    schema = None
    for batch in _batches(source):
        found = pa.Table.from_pylist(batch).schema
        schema = (
            found
            if schema is None
            else pa.unify_schemas([schema, found], promote_options="permissive")
        )
    target = out / "results.parquet"
    with atomic_open(target, "wb") as handle:
        if schema is None:
            pq.write_table(pa.table({}), handle)
            return target
        with pq.ParquetWriter(handle, schema) as writer:
            for batch in _batches(source):
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    return target
