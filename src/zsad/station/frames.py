"""Where a station's images come from: a hot folder, or a list of paths read line by line.

A frame is ready when it decodes. A file that does not decode may still be being written, so it
is tried again while it keeps changing, and rejected only once it has stayed the same and
undecodable for ``retry_s`` seconds. A frame is known by (name, size, mtime): the same name
written again later is a new frame.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from zsad.data.images import ImageLoadError, load_image

# Names writers use while a file is incomplete; such files are never frames.
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", "~")

FrameKey = tuple[str, int, int]  # (name, size, mtime_ns)


@dataclass
class FileVersion:
    """One version of a file: a name written again later is a new version."""

    path: Path
    name: str
    size: int
    mtime_ns: int

    @property
    def key(self) -> FrameKey:
        """Identity of this version of the file."""
        return (self.name, self.size, self.mtime_ns)


@dataclass
class Frame(FileVersion):
    """A decoded image, ready to score."""

    image: np.ndarray
    seen_at: float  # time.monotonic() when the file was first seen
    decode_s: float


@dataclass
class Rejection(FileVersion):
    """A file that never decoded, with the reason from the last attempt."""

    reason: str


@dataclass
class _Attempt:
    """Decode attempts on one version of a file that is not (yet) readable."""

    size: int
    mtime_ns: int
    first_seen: float
    unchanged_since: float
    reason: str = ""
    tries: int = 0


def _is_candidate(name: str) -> bool:
    return not name.startswith(".") and not name.endswith(PARTIAL_SUFFIXES)


@dataclass
class _Decoder:
    """Decode attempts with the retry rule shared by both sources."""

    retry_s: float
    attempts: dict[str, _Attempt] = field(default_factory=dict)

    def attempt(self, path: Path, name: str) -> Frame | Rejection | None:
        """A Frame, a Rejection once retries are used up, or None (gone, or try again later)."""
        try:
            stat = path.stat()
        except OSError:
            self.attempts.pop(name, None)
            return None
        now = time.monotonic()
        state = self.attempts.get(name)
        if state is None or (state.size, state.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            first = now if state is None else state.first_seen
            state = _Attempt(stat.st_size, stat.st_mtime_ns, first, now)
            self.attempts[name] = state
        start = time.perf_counter()
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            state.reason, state.tries = exc.reason, state.tries + 1
            if now - state.unchanged_since < self.retry_s:
                return None
            del self.attempts[name]
            return Rejection(path, name, stat.st_size, stat.st_mtime_ns, state.reason)
        decode_s = time.perf_counter() - start
        self.attempts.pop(name, None)
        return Frame(path, name, stat.st_size, stat.st_mtime_ns, image, state.first_seen, decode_s)


class HotFolder:
    """Files appearing under ``root`` (recursively), oldest first by modification time."""

    blocking = False  # next() returns None at once when nothing is ready
    exhausted = False  # a folder never runs out

    def __init__(
        self,
        root: Path,
        done: set[FrameKey],
        *,
        retry_s: float = 2.0,
        exclude: Path | None = None,
    ) -> None:
        self.root = root.absolute()
        self.done = done
        self._decoder = _Decoder(retry_s)
        self._exclude = None if exclude is None else exclude.resolve()
        self._queue: deque[tuple[Path, str]] = deque()

    @property
    def backlog(self) -> int:
        """Files seen and not yet scored or rejected."""
        return len(self._queue) + len(self._decoder.attempts)

    def _scan(self) -> deque[tuple[Path, str]]:
        found: list[tuple[int, str, Path]] = []
        present: set[FrameKey] = set()
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue  # a folder removed while we looked
            for entry in entries:
                if not _is_candidate(entry.name):
                    continue
                path = Path(entry.path)
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if self._exclude is None or path.resolve() != self._exclude:
                            stack.append(path)
                        continue
                    if not entry.is_file():
                        continue
                    stat = entry.stat()
                except OSError:
                    continue
                key = (path.relative_to(self.root).as_posix(), stat.st_size, stat.st_mtime_ns)
                present.add(key)
                if key not in self.done:
                    found.append((stat.st_mtime_ns, key[0], path))
        # Forget files that left the folder, so memory follows the folder, not the run length.
        self.done.intersection_update(present)
        found.sort()
        return deque((path, name) for _, name, path in found)

    def next(self) -> Frame | Rejection | None:
        """The next ready frame or rejection in arrival order; None when nothing is ready now."""
        if not self._queue:
            self._queue = self._scan()
        while self._queue:
            path, name = self._queue.popleft()
            item = self._decoder.attempt(path, name)
            if item is not None:
                return item
        return None


class PathList:
    """Paths read one per line from a text stream (stdin), in the order given."""

    blocking = True  # next() waits for the next line

    def __init__(self, stream: IO[str], done: set[FrameKey], *, retry_s: float = 2.0) -> None:
        self._lines: Iterator[str] = iter(stream)
        self.done = done
        self._decoder = _Decoder(retry_s)
        self.exhausted = False
        self.backlog = 0

    def next(self) -> Frame | Rejection | None:
        """Block for the next path; retry it until it decodes or is rejected. None at the end."""
        for line in self._lines:
            name = line.strip()
            if not name:
                continue
            path = Path(name)
            try:
                stat = path.stat()
            except OSError:
                return Rejection(path, name, 0, 0, "no such file")
            if (name, stat.st_size, stat.st_mtime_ns) in self.done:
                continue
            while True:
                item = self._decoder.attempt(path, name)
                if item is not None:
                    return item
                if name not in self._decoder.attempts:
                    return Rejection(path, name, 0, 0, "no such file (removed while reading)")
                time.sleep(0.05)
        self.exhausted = True
        return None
