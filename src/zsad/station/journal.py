"""An append-only results.jsonl that survives kill -9: one write and one fsync per record.

A record is one ``os.write`` of one line on an O_APPEND descriptor, followed by ``fsync``. A
kill between records loses nothing already written. A kill (or power loss) inside a write can
leave a partial last line; it is cut off when the journal is opened again, and the image it
described has no record, so it is scored again: no record is lost, none is duplicated.
Only one process may append: the journal holds an exclusive lock on ``.lock`` beside it.
Each record carries its ``id``, its 0-based line number, so consumers fed from the journal (the
line sinks) can de-duplicate what they receive twice.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zsad.api.results import read_record
from zsad.errors import ZsadError
from zsad.formats.atomic import make_folders, open_output


class Journal:
    """Open (and repair) ``path`` for appending records; ``records()`` reads what is there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        make_folders(path.parent)
        self._lock = open_output(path.with_name(f".{path.name}.lock"), os.O_RDWR)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # One descriptor for the repair and the appends: a path opened again could be a link.
            self._fd = open_output(path, os.O_RDWR | os.O_APPEND)
        except BlockingIOError:
            os.close(self._lock)
            raise ZsadError(
                f"{path}: another zsad process is writing these results (lock held)"
            ) from None
        except BaseException:
            os.close(self._lock)
            raise
        self.repaired_bytes = self._cut_partial_line()
        self.count = self._count_lines()

    def _cut_partial_line(self) -> int:
        """Drop a trailing line without its newline (a write cut short); returns bytes dropped."""
        size = os.fstat(self._fd).st_size
        # Read backwards in blocks until the last newline.
        end, keep = size, 0
        while end > 0:
            start = max(0, end - 65536)
            cut = os.pread(self._fd, end - start, start).rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        if keep < size:
            os.ftruncate(self._fd, keep)
            os.fsync(self._fd)
        return size - keep

    def _count_lines(self) -> int:
        count = offset = 0
        while block := os.pread(self._fd, 1 << 20, offset):
            count += block.count(b"\n")
            offset += len(block)
        return count

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record written so far, in order, in the current schema (older ones upgraded)."""
        return read_journal(self.path)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably, under the next id: a single write of one line, then fsync."""
        line = {"id": self.count, **record}
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self.count += 1

    def close(self) -> None:
        """Release the file and the lock."""
        os.close(self._fd)
        os.close(self._lock)


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """Every record of the journal at ``path``, in order, in the current schema."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ZsadError(f"{path}: line {number} is not JSON ({exc})") from exc
            yield read_record(record, f"{path}: line {number}")
