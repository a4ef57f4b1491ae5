"""Where a station's images come from: a hot folder, or a list of paths read line by line.

A frame is ready when it decodes. A file that does not decode may still be being written, so it
is tried again while it keeps changing, and rejected only once it has stayed the same and
undecodable for ``retry_s`` seconds. A frame is known by (name, size, mtime): the same name
written again later is a new frame.

A hot folder offers only files named like images (``IMAGE_EXTENSIONS``, any case): users keep
notes, label files and the desktop's Thumbs.db beside the frames, and those are left alone. An
image in a format zsad does not read (a GIF, a HEIC) and a symbolic link that cannot be followed
are passed over too, but said once per file (``notices``): a camera set to the wrong format
would otherwise look like an idle line. It never descends into the station's own OUT folder,
and it reports when the folder itself goes missing (``missing_since``) instead of polling an
empty listing in silence.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from zsad.data.datasets import same_folder
from zsad.data.images import IMAGE_EXTENSIONS, ImageLoadError, as_rgb_array, is_image_file
from zsad.errors import ZsadError

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
    part_id: str | None = None  # given with the trigger a camera frame answers


@dataclass
class Rejection(FileVersion):
    """A file that never decoded, with the reason from the last attempt."""

    reason: str


@dataclass(frozen=True)
class Unanswered:
    """A trigger taken from the line that no frame answered (the camera went away, or was late)."""

    part_id: str | None
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


DecodeHook = Callable[[FileVersion | None], None]


@dataclass
class _Decoder:
    """Decode attempts with the retry rule shared by both sources."""

    retry_s: float
    max_side: int | None = None  # None: full size
    # Told which file is about to be decoded, and None when the decode failed: a station
    # records it, because a frame can kill the process while it decodes.
    on_decode: DecodeHook | None = None
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
        if self.on_decode is not None:
            self.on_decode(FileVersion(path, name, stat.st_size, stat.st_mtime_ns))
        start = time.perf_counter()
        try:
            image = as_rgb_array(path, self.max_side)
        except ImageLoadError as exc:
            if self.on_decode is not None:
                self.on_decode(None)
            state.reason, state.tries = exc.reason, state.tries + 1
            if now - state.unchanged_since < self.retry_s:
                return None
            del self.attempts[name]
            return Rejection(path, name, stat.st_size, stat.st_mtime_ns, state.reason)
        decode_s = time.perf_counter() - start
        try:
            after = path.stat()
        except OSError:
            after = None
        if after is None or (after.st_size, after.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            # Written to (or gone) while it decoded: the pixels may be the new version's and the
            # key the old one's, which would score the new version again. Try once it settles.
            if self.on_decode is not None:
                self.on_decode(None)
            return None
        self.attempts.pop(name, None)
        return Frame(path, name, stat.st_size, stat.st_mtime_ns, image, state.first_seen, decode_s)


class _Source:
    """What both sources share: the decoder, and the hook a station sets on it."""

    _decoder: _Decoder

    @property
    def on_decode(self) -> DecodeHook | None:
        """Called with each file about to be decoded, then None if it did not decode."""
        return self._decoder.on_decode

    @on_decode.setter
    def on_decode(self, hook: DecodeHook | None) -> None:
        self._decoder.on_decode = hook

    def notices(self) -> list[str]:
        """Lines to tell the user once (files passed over, and why); each is returned once."""
        return []


def _is_file(entry: os.DirEntry[str]) -> bool:
    """Whether the entry is, or links to, a regular file; a link loop is not one."""
    try:
        return entry.is_file()
    except OSError:
        return False  # ELOOP: is_file() passes over dangling links but raises on loops


def _other_image_format(name: str) -> str | None:
    """The format of an image file zsad does not read (by its suffix), else None."""
    from PIL import Image

    suffix = Path(name).suffix.lower()
    if not suffix or suffix in IMAGE_EXTENSIONS:
        return None
    return Image.registered_extensions().get(suffix)


class HotFolder(_Source):
    """Image files appearing under ``root`` (recursively), oldest first by modification time.

    ``exclude`` (the station's OUT) is never scanned, wherever it is below ``root``; it must not
    be ``root`` itself. ``max_side`` bounds the decoded size (None: full size).
    """

    blocking = False  # next() returns None at once when nothing is ready
    exhausted = False  # a folder never runs out

    def __init__(
        self,
        root: Path,
        done: set[FrameKey],
        *,
        retry_s: float = 2.0,
        exclude: Path | None = None,
        max_side: int | None = None,
    ) -> None:
        self.root = root.absolute()
        self.done = done
        self._decoder = _Decoder(retry_s, max_side)
        self._queue: deque[tuple[Path, str]] = deque()
        self.missing_since: float | None = None  # time.time() when the folder went missing
        self.missing_reason = ""
        # A share mounted on root that is unmounted leaves an empty folder behind, not a
        # missing one; a mount point that stops being one is reported as missing too.
        self._mounted = os.path.ismount(self.root)
        self._exclude = None if exclude is None else exclude.absolute()
        self._exclude_rel: Path | None = None
        self._exclude_id: tuple[int, int] | None = None
        self._passed_over: set[str] = set()  # files already said not to be taken
        self._notices: list[str] = []
        if self._exclude is not None:
            if same_folder(self.root, self._exclude):
                raise ZsadError(
                    f"{exclude}: the results folder is the hot folder itself; the station "
                    "would score its own maps and overlays"
                )
            # Compared by path relative to root (works before OUT exists, and through any
            # symlink in the spelling of either path) and by inode (bind mounts, aliases).
            try:
                self._exclude_rel = self._exclude.resolve().relative_to(self.root.resolve())
            except ValueError:
                self._exclude_rel = None  # OUT is outside root

    @property
    def backlog(self) -> int:
        """Files seen and not yet scored or rejected."""
        return len(self._queue) + len(self._decoder.attempts)

    def _excluded(self, entry: os.DirEntry[str], path: Path) -> bool:
        if self._exclude is None:
            return False
        if self._exclude_rel is not None and path.relative_to(self.root) == self._exclude_rel:
            return True
        if self._exclude_id is None:
            try:
                stat = self._exclude.stat()
            except OSError:
                return False  # not made yet: nothing of it to skip
            self._exclude_id = (stat.st_dev, stat.st_ino)
        try:
            stat = entry.stat(follow_symlinks=False)
        except OSError:
            return False
        return (stat.st_dev, stat.st_ino) == self._exclude_id

    def _root_entries(self) -> list[os.DirEntry[str]] | None:
        """The root's entries, or None (and ``missing_since`` set) when it cannot be listed."""
        try:
            if self._mounted and not os.path.ismount(self.root):
                raise OSError(0, "no longer a mount point")
            entries = list(os.scandir(self.root))
        except OSError as exc:
            if self.missing_since is None:
                self.missing_since = time.time()
            self.missing_reason = exc.strerror or str(exc)
            return None
        self.missing_since = None
        return entries

    def notices(self) -> list[str]:
        """Files passed over since the last call, each said once, with the reason."""
        lines, self._notices = self._notices, []
        return lines

    def _pass_over(self, path: Path, reason: str, passed: set[str]) -> None:
        name = path.relative_to(self.root).as_posix()
        passed.add(name)
        if name not in self._passed_over:
            self._passed_over.add(name)
            self._notices.append(f"not taken: {path}: {reason}")

    def _not_taken(self, entry: os.DirEntry[str]) -> str | None:
        """Why a file the scan does not offer deserves a word, or None to pass it in silence."""
        if not is_image_file(entry.name):
            kind = _other_image_format(entry.name)
            if kind is None:
                return None  # notes, labels, Thumbs.db: left alone by design
            return f"{kind} images are not read (zsad reads {', '.join(IMAGE_EXTENSIONS)})"
        if entry.is_symlink():
            try:
                os.stat(entry.path)
            except OSError as exc:
                return f"a symbolic link that cannot be followed ({exc.strerror or exc})"
            return "a symbolic link to something other than a file"
        return "not a regular file"

    def _scan(self) -> deque[tuple[Path, str]]:
        found: list[tuple[int, str, Path]] = []
        present: set[FrameKey] = set()
        passed: set[str] = set()
        root_entries = self._root_entries()
        if root_entries is None:
            return deque()
        complete = True  # every folder listed: only then can ``done`` forget what is gone
        pending: list[list[os.DirEntry[str]]] = [root_entries]
        while pending:
            entries = pending.pop()
            for entry in entries:
                if not _is_candidate(entry.name):
                    continue
                path = Path(entry.path)
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if not self._excluded(entry, path):
                            try:
                                pending.append(list(os.scandir(path)))
                            except OSError:
                                complete = False  # removed while we looked, or unreadable
                        continue
                    if not is_image_file(entry.name) or not _is_file(entry):
                        reason = self._not_taken(entry)
                        if reason is not None:
                            self._pass_over(path, reason, passed)
                        continue
                    stat = entry.stat()
                except OSError:
                    complete = False
                    continue
                key = (path.relative_to(self.root).as_posix(), stat.st_size, stat.st_mtime_ns)
                present.add(key)
                if key not in self.done:
                    found.append((stat.st_mtime_ns, key[0], path))
        if complete:
            # Forget files that left the folder, so memory follows the folder, not the run
            # length. Never after a partial listing: a folder that could not be read for a
            # moment still holds its scored files, and they must not be offered again.
            self.done.intersection_update(present)
            self._passed_over.intersection_update(passed)
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


class PathList(_Source):
    """Paths read one per line from a text stream (stdin), in the order given; every path is
    tried, whatever its name (it was listed on purpose)."""

    blocking = True  # next() waits for the next line

    def __init__(
        self,
        stream: IO[str],
        done: set[FrameKey],
        *,
        retry_s: float = 2.0,
        max_side: int | None = None,
    ) -> None:
        self._lines: Iterator[str] = iter(stream)
        self.done = done
        self._decoder = _Decoder(retry_s, max_side)
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
