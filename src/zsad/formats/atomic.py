"""Atomic file writes: a temporary file beside the target, fsync, then a rename, so readers and
restarts never see a half-written file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from zsad.errors import ZsadError


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it is fsync'd and renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


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


@contextmanager
def writable_folder(path: Path, option: str = "--out") -> Iterator[Path]:
    """Create ``path`` if needed and prove a file can be written there, or fail in one line
    before any work is done; if the work then fails, folders this made and left empty go again."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ZsadError(f"{option} {path}: exists and is not a folder")
    made = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".zsad-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
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
