"""Follow a station's results.jsonl: complete lines only, in order, each with its record id.

The id of a record is its 0-based line number in the journal (the station also writes it into
the record). A line without its newline is still being written, or was cut by a kill; the feed
waits for it and never hands out a partial record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from zsad.api.results import read_record
from zsad.errors import ZsadError


class JournalFeed:
    """Reads the records of ``path`` from record ``start`` on, as they are appended.

    With ``keep_offsets`` the feed remembers where each record it passed starts (8 bytes a
    record), so ``seek`` back to any earlier id is immediate.
    """

    def __init__(self, path: Path, start: int = 0, *, keep_offsets: bool = False) -> None:
        self.path = path
        self._handle: IO[bytes] | None = None
        self._offset = 0
        self._next = 0
        self._offsets: list[int] | None = [] if keep_offsets else None
        self.seek(start)

    @property
    def position(self) -> int:
        """The id of the next record ``read`` returns."""
        return self._next

    @property
    def known(self) -> int:
        """How many records the feed has passed: ids below this are in the journal."""
        return len(self._offsets) if self._offsets is not None else self._next

    def seek(self, record_id: int) -> None:
        """Continue from ``record_id``; an id past the end waits for the journal to grow."""
        record_id = max(0, record_id)
        if self._offsets is not None and record_id < len(self._offsets):
            self._offset, self._next = self._offsets[record_id], record_id
            return
        if self._offsets:
            self._offset, self._next = self._offsets[-1], len(self._offsets) - 1
        elif record_id < self._next:
            self._offset, self._next = 0, 0
        while self._next < record_id and self._lines(min(record_id - self._next, 4096)):
            pass

    def read(self, limit: int = 256) -> list[dict[str, Any]]:
        """Up to ``limit`` new complete records, oldest first, each carrying its ``id``, in the
        current schema (older records upgraded)."""
        number, offset = self._next, self._offset
        records = []
        for line in self._lines(limit):
            where = f"{self.path}: record {number}"
            try:
                record = read_record({"id": number, **json.loads(line)}, where)
            except (ValueError, ZsadError) as exc:
                # Stay before the bad line: nothing past it is handed out as if it were fine.
                self._next, self._offset = number, offset
                if isinstance(exc, ZsadError):
                    raise
                raise ZsadError(f"{where} is not JSON ({exc})") from exc
            records.append(record)
            number, offset = number + 1, offset + len(line)
        return records

    def close(self) -> None:
        """Release the file."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _lines(self, limit: int) -> list[bytes]:
        """The next ``limit`` complete lines; advances the position past them."""
        handle = self._open()
        if handle is None:
            return []
        handle.seek(self._offset)
        lines = []
        while len(lines) < limit:
            line = handle.readline()
            if not line.endswith(b"\n"):
                break  # not written yet (or cut by a kill: the station removes it on restart)
            if self._offsets is not None and self._next == len(self._offsets):
                self._offsets.append(self._offset)
            self._offset += len(line)
            self._next += 1
            lines.append(line)
        return lines

    def _open(self) -> IO[bytes] | None:
        if self._handle is None:
            try:
                self._handle = self.path.open("rb")
            except FileNotFoundError:
                return None
        return self._handle
