"""Files a station writes into OUT, a folder others may be able to write into: temporary names
cannot be planted, links are replaced and never written through, and files are 0644 and
folders 0755 whatever the umask."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from zsad.errors import ZsadError
from zsad.formats.atomic import save_npy, writable_folder, write_json, write_text
from zsad.station.journal import Journal


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside OUT that a planted link points at; it must never change."""
    path = tmp_path / "victim"
    path.write_text("precious")
    return path


@pytest.fixture
def umask_0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_link_planted_at_a_predictable_temporary_name_is_not_followed(
    tmp_path: Path, victim: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / f".status.json.{os.getpid()}.tmp").symlink_to(victim)
    write_json(out / "status.json", {"state": "running"})
    assert victim.read_text() == "precious"
    assert not (out / "status.json").is_symlink()
    assert json.loads((out / "status.json").read_text()) == {"state": "running"}


def test_a_link_planted_at_the_target_is_replaced_not_written_through(
    tmp_path: Path, victim: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    reason = out / "reason.txt"
    reason.symlink_to(victim)
    write_text(reason, "bad frame\n")
    assert victim.read_text() == "precious"
    assert not reason.is_symlink() and reason.read_text() == "bad frame\n"


def test_the_write_probe_does_not_follow_a_planted_link(tmp_path: Path, victim: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / f".zsad-write-test.{os.getpid()}").symlink_to(victim)
    with writable_folder(out):
        pass
    assert victim.read_text() == "precious"


def test_the_journal_refuses_a_link_and_leaves_its_target_alone(
    tmp_path: Path, victim: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").symlink_to(victim)  # no trailing newline: a "partial line" to cut
    with pytest.raises(ZsadError, match="symbolic link"):
        Journal(out / "results.jsonl")
    assert victim.read_text() == "precious"
    (out / "results.jsonl").unlink()
    Journal(out / "results.jsonl").close()  # the lock was released with the refusal


def test_outputs_are_0644_and_folders_0755_under_umask_0(tmp_path: Path, umask_0: None) -> None:
    out = tmp_path / "out"
    with writable_folder(out):
        write_json(out / "status.json", {"state": "running"})
        save_npy(out / "maps" / "000000_a.npy", np.zeros((2, 2), np.float32))
        journal = Journal(out / "results.jsonl")
        journal.append({"decision": "OK"})
        journal.close()
    for name in ("status.json", "maps/000000_a.npy", "results.jsonl", ".results.jsonl.lock"):
        assert _mode(out / name) == 0o644, name
    for folder in (out, out / "maps"):
        assert _mode(folder) == 0o755, folder
    assert [p.name for p in out.rglob("*.tmp")] == []


def test_a_rejected_file_replaces_a_link_planted_where_it_goes(
    tmp_path: Path, victim: Path, umask_0: None
) -> None:
    from zsad.formats.atomic import copy_file, move_file

    out = tmp_path / "out"
    out.mkdir()
    source = tmp_path / "frame.png"
    for put in (copy_file, move_file):
        source.write_bytes(b"junk")
        os.utime(source, ns=(1_000_000_000, 2_000_000_000))
        target = out / f"{put.__name__}.png"
        target.symlink_to(victim)
        put(source, target)
        assert not target.is_symlink() and target.read_bytes() == b"junk"
        assert target.stat().st_mtime_ns == 2_000_000_000
        assert victim.read_text() == "precious"
    assert _mode(out / "copy_file.png") == 0o644
