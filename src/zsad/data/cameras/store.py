"""Camera frames kept as PNG under OUT/frames, so a record can link the picture it scored.

A frame is written before it is scored, into ``frames/pending`` (a temporary file created
exclusively, fsync'd, renamed, the folder fsync'd): a crash after acquisition loses nothing,
and ``pending()`` lists what a restart must still score. Once scored, ``destination`` says where
the policy files it (``frames/ng`` or ``frames/ok``, or nowhere); the record names that link and
is journalled, then ``file_as`` moves the frame there or removes it. A crash between the two
leaves the frame pending with its record journalled: the restart finishes the move from the
record, so a frame is never scored twice and a journalled link resolves once the station runs.

Policies: ``ng`` keeps NG frames only, ``all`` keeps every frame, ``none`` keeps none. A disk
budget bounds the kept frames: over it, the oldest OK frames go first and NG frames only when
no OK frame is left, so the evidence of defects is kept longest."""

from __future__ import annotations

import os
import re
import time
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from zsad.data.cameras.source import CameraFrame
from zsad.errors import ZsadError
from zsad.formats.atomic import atomic_open, make_folders, sync_folder

KEEP_POLICIES = ("ng", "all", "none")
PART_ID = "zsad:part_id"  # the PNG text key of the part id given with the trigger
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def read_part_id(path: Path) -> str | None:
    """The part id ``write`` put in a frame's PNG text, None if it has none."""
    with Image.open(path) as image:
        return image.text.get(PART_ID)  # type: ignore[attr-defined]


def frame_name(frame: CameraFrame) -> str:
    """A file stem for ``frame``: UTC time, frame number and part id, sortable and unique."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(frame.timestamp))
    micros = int(frame.timestamp % 1 * 1e6)
    part = f"-{_UNSAFE.sub('_', frame.part_id)[:40]}" if frame.part_id else ""
    return f"{stamp}.{micros:06d}Z-{frame.number:06d}{part}"


class FrameStore:
    """Frames under ``OUT/frames``, kept by ``keep`` within ``budget_bytes`` (None: no bound)."""

    def __init__(self, out: Path, keep: str = "ng", budget_bytes: int | None = None) -> None:
        if keep not in KEEP_POLICIES:
            raise ZsadError(f"keep-frames {keep!r}: expected one of {', '.join(KEEP_POLICIES)}")
        if budget_bytes is not None and budget_bytes <= 0:
            raise ZsadError(f"frames budget {budget_bytes}: must be a positive number of bytes")
        self.out = Path(out)
        self.keep = keep
        self.budget_bytes = budget_bytes
        self.root = self.out / "frames"
        for folder in ("pending", "ok", "ng"):
            make_folders(self.root / folder)
        self._scan(self.root / "pending")  # clears what a crash left half-written
        self._kept = {verdict: deque(self._scan(self.root / verdict)) for verdict in ("ok", "ng")}
        self.used_bytes = sum(size for kept in self._kept.values() for _, size in kept)

    def write(self, image: np.ndarray, name: str, part_id: str | None = None) -> str:
        """Write ``image`` durably as frames/pending/NAME.png (``part_id`` in its PNG text, so
        a restart that scores it again still knows it); its path relative to OUT."""
        target = self._target("pending", name)
        text = PngInfo()
        if part_id is not None:
            text.add_itxt(PART_ID, part_id)
        with atomic_open(target, "wb") as handle:
            # Level 1: a multi-megapixel frame compresses in tens of milliseconds, not a second.
            Image.fromarray(image).save(handle, format="PNG", compress_level=1, pnginfo=text)
        sync_folder(target.parent)
        return target.relative_to(self.out).as_posix()

    def destination(self, relative: str, ng: bool) -> str | None:
        """Where the policy files a scored pending frame (relative to OUT), None if not kept."""
        if not self.keeps(ng):
            return None
        source = self._pending(relative)
        target = self._target("ng" if ng else "ok", source.stem)
        return target.relative_to(self.out).as_posix()

    def file_as(self, relative: str, link: str | None) -> None:
        """Move a pending frame to ``link`` (a ``destination``), or remove it when None."""
        source = self._pending(relative)
        if link is None:
            source.unlink(missing_ok=True)
            return
        target = self.out / link
        verdict = target.parent.name
        if target.parent.parent != self.root or verdict not in self._kept:
            raise ZsadError(f"{link}: not a place for a kept frame under {self.root}")
        size = source.stat().st_size
        os.replace(source, target)
        sync_folder(target.parent)
        sync_folder(source.parent)
        self._kept[verdict].append((target.name, size))
        self.used_bytes += size
        self._enforce_budget(newest=target)

    def keeps(self, ng: bool) -> bool:
        """Whether the policy keeps a frame of this verdict."""
        return self.keep == "all" or (self.keep == "ng" and ng)

    def pending(self) -> list[str]:
        """Frames written but not yet filed, oldest first (paths relative to OUT)."""
        folder = self.root / "pending"
        return [(folder / name).relative_to(self.out).as_posix() for name, _ in self._scan(folder)]

    def _enforce_budget(self, newest: Path) -> None:
        if self.budget_bytes is None:
            return
        for verdict in ("ok", "ng"):
            kept = self._kept[verdict]
            while self.used_bytes > self.budget_bytes and kept and kept[0][0] != newest.name:
                name, size = kept.popleft()
                (self.root / verdict / name).unlink(missing_ok=True)
                self.used_bytes -= size

    def _target(self, folder: str, name: str) -> Path:
        if not _NAME.match(name):
            raise ZsadError(f"frame name {name!r}: use letters, digits, '.', '_' and '-' only")
        target = self.root / folder / f"{name}.png"
        if target.exists():  # a record may link it: never replace a kept frame
            raise ZsadError(f"{target}: a frame of that name is already there")
        return target

    def _pending(self, relative: str) -> Path:
        path = self.out / relative
        if path.parent != self.root / "pending":
            raise ZsadError(f"{relative}: not a pending frame of {self.root}")
        return path

    @staticmethod
    def _scan(folder: Path) -> list[tuple[str, int]]:
        """(name, size) of the PNGs in ``folder``, oldest first; leftover temp files go."""
        found = []
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                    os.unlink(entry.path)  # a write a crash cut short
                elif entry.name.endswith(".png") and entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    found.append((stat.st_mtime_ns, entry.name, stat.st_size))
        return [(name, size) for _, name, size in sorted(found)]
