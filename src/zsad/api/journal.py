"""OUT/results.jsonl of `zsad infer` as a journal of subsets, so a killed run resumes.

A subset's records go out in one ``os.write`` on an O_APPEND descriptor, then ``fsync``: a kill
between subsets loses nothing written, a kill inside a write leaves a cut tail. On opening, the
file is cut back to the end of its last complete subset (every member of the subset has its
record), so the subset that was being written is scored again in full: no image is scored twice,
none is skipped. OUT/.infer-plan.json names the run the journal belongs to (the images, their
content, the settings) and its split into subsets: the same run resumes with that split (a
split fitted to the memory free now could differ), another run starts the journal afresh when it
writes its first subset. One process at a time: an exclusive lock on OUT.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zsad.api.results import read_record
from zsad.errors import ZsadError
from zsad.formats.atomic import open_output, write_json

PLAN_FILE = ".infer-plan.json"


class SetJournal:
    """Append-only results.jsonl in ``out`` for ``run``: ``subsets`` is the split to score
    (the stored one when resuming), ``done`` the subsets already there, ``count`` their
    records."""

    def __init__(self, out: Path, run: dict[str, Any], subsets: list[int]) -> None:
        self.path = out / "results.jsonl"
        # The lock is on the folder: a run that fails before its first subset leaves no file.
        self._lock = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise ZsadError(f"{self.path}: another zsad process is writing these results") from None
        self._plan_file = out / PLAN_FILE
        stored = _read_plan(self._plan_file)
        self._run = json.loads(json.dumps(run))  # as it reads back: tuples become lists
        same_run = isinstance(stored, dict) and stored.get("run") == self._run
        self.subsets: list[int] = stored["subsets"] if same_run else list(subsets)
        # The records themselves stay on disk: a journal of any length costs no memory here.
        self.count = 0  # records in the journal: the next record's id
        self.done: set[int] = set()
        self._fd: int | None = None
        if same_run:
            self._fd = open_output(self.path, os.O_RDWR | os.O_APPEND)
            self.count, self.done = self._complete_subsets(Counter(self.subsets))

    def _start(self) -> int:
        """A new run's journal, made on its first subset: earlier results stay until then. The
        old records go before the new plan is written, so a kill in between never pairs the
        new plan with old records."""
        fd = open_output(self.path, os.O_RDWR | os.O_APPEND)
        os.ftruncate(fd, 0)
        os.fsync(fd)
        write_json(self._plan_file, {"run": self._run, "subsets": self.subsets})
        return fd

    def _complete_subsets(self, sizes: Counter[int]) -> tuple[int, set[int]]:
        """How many records the complete subsets hold, and which subsets they are; the file is
        cut back to end with them."""
        assert self._fd is not None
        counts = Counter(subset for subset, _ in self._lines())
        keep, kept_bytes, done = 0, 0, set()
        for subset, length in self._lines():
            if counts[subset] != sizes.get(subset):
                break
            keep, kept_bytes = keep + 1, kept_bytes + length
            done.add(subset)
        if kept_bytes < os.fstat(self._fd).st_size:
            os.ftruncate(self._fd, kept_bytes)
            os.fsync(self._fd)
        return keep, done

    def _lines(self) -> Iterator[tuple[int, int]]:
        """The subset and the length in bytes of each whole line, read one line at a time."""
        with self.path.open("rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    return  # a last line without its newline was cut short
                yield read_record(json.loads(line), str(self.path))["subset"], len(line)

    def records(self) -> Iterator[dict[str, Any]]:
        """This run's records, read back one at a time (none before its first subset)."""
        if self._fd is None:
            return  # the file, if any, holds another run's records
        with self.path.open("rb") as handle:
            for line in itertools.islice(handle, self.count):
                yield read_record(json.loads(line), str(self.path))

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write one subset's records, whose ``id`` numbers on from ``count``, at once."""
        if self._fd is None:
            self._fd = self._start()
        data = memoryview("".join(json.dumps(r) + "\n" for r in records).encode())
        while data:
            data = data[os.write(self._fd, data) :]
        os.fsync(self._fd)
        self.count += len(records)

    def close(self) -> None:
        """Release the file and the lock."""
        if self._fd is not None:
            os.close(self._fd)
        os.close(self._lock)

    def __enter__(self) -> SetJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_plan(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # no plan, or one cut short: a new run
