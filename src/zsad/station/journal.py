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

from zsad.errors import ZsadError


class Journal:
    """Open (and repair) ``path`` for appending records; ``records()`` reads what is there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise ZsadError(
                f"{path}: another zsad process is writing these results (lock held)"
            ) from None
        self.repaired_bytes = self._cut_partial_line()
        self.count = self._count_lines()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _cut_partial_line(self) -> int:
        """Drop a trailing line without its newline (a write cut short); returns bytes dropped."""
        if not self.path.exists():
            return 0
        with self.path.open("rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            # Read backwards in blocks until the last newline.
            end = size
            while end > 0:
                start = max(0, end - 65536)
                handle.seek(start)
                block = handle.read(end - start)
                cut = block.rfind(b"\n")
                if cut >= 0:
                    keep = start + cut + 1
                    break
                end = start
            else:
                keep = 0
            if keep < size:
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())
            return size - keep

    def _count_lines(self) -> int:
        if not self.path.exists():
            return 0
        count = 0
        with self.path.open("rb") as handle:
            while block := handle.read(1 << 20):
                count += block.count(b"\n")
        return count

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record written so far, in order."""
        with self.path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise ZsadError(f"{self.path}: line {number} is not JSON ({exc})") from exc
                yield record

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
