"""Atomic file writes: a temporary file beside the target, fsync, then a rename, so readers and
restarts never see a half-written file.

Output folders may be writable by others, so a temporary name is unpredictable and created
exclusively, never through a link someone planted; files are made 0644 and folders at most 0755,
whatever the umask."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from zsad.errors import ZsadError

FILE_MODE = 0o644
FOLDER_MODE = 0o755


def make_folders(path: Path) -> None:
    """Create ``path`` and its missing parents, none of them writable by group or others."""
    # mkdir(parents=True) makes the parents 0777 minus the umask: world-writable under umask 0.
    for folder in reversed([p for p in (path, *path.parents) if not p.exists()]):
        folder.mkdir(mode=FOLDER_MODE, exist_ok=True)


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it is fsync'd and renamed over ``path``."""
    path = Path(path)
    make_folders(path.parent)
    # mkstemp picks a random name and opens it O_CREAT | O_EXCL | O_NOFOLLOW.
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, mode) as handle:
            os.fchmod(handle.fileno(), FILE_MODE)  # mkstemp makes 0600; outputs are for readers
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def open_output(path: Path, flags: int) -> int:
    """A descriptor on the file ``path`` (created 0644 if missing) that never follows a link."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        try:
            return os.open(path, flags | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ZsadError(
                    f"{path}: is a symbolic link; zsad writes its outputs only as plain files"
                ) from exc
            raise
    os.fchmod(fd, FILE_MODE)
    return fd


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_open(path) as handle:
        handle.write(text)


def write_json(path: Path, payload: Any) -> None:
    """Write indented JSON atomically."""
    write_text(path, json.dumps(payload, indent=2) + "\n")


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically."""
    write_text(path, "".join(json.dumps(record) + "\n" for record in records))


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write a .npy file atomically."""
    with atomic_open(path, "wb") as handle:
        np.save(handle, array)


def copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` atomically, keeping its access and modification times."""
    stat = source.stat()
    with open(source, "rb") as reader, atomic_open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer)
        writer.flush()  # a later write would stamp the copy with the time of the copy
        os.utime(writer.fileno(), ns=(stat.st_atime_ns, stat.st_mtime_ns))


def move_file(source: Path, target: Path) -> None:
    """Rename ``source`` over ``target``; across file systems, copy it atomically and remove it."""
    try:
        os.replace(source, target)  # replaces a link at ``target``, never writes through it
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy_file(source, target)
        source.unlink()


@contextmanager
def writable_folder(path: Path, option: str = "--out") -> Iterator[Path]:
    """Create ``path`` if needed and prove a file can be written there, or fail in one line
    before any work is done; if the work then fails, folders this made and left empty go again."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ZsadError(f"{option} {path}: exists and is not a folder")
    made = [p for p in (path, *path.parents) if not p.exists()]
    try:
        make_folders(path)
        fd, probe = tempfile.mkstemp(prefix=".zsad-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ZsadError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from exc
    try:
        yield path
    except BaseException:
        for folder in made:  # deepest first; a folder with anything in it stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def sync_folder(path: Path) -> None:
    """fsync the folder ``path``, so a rename or removal in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
