"""The frame store: durable PNGs under OUT/frames, the keep policy, the disk budget that deletes
the oldest OK frames first, and what a restart finds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from zsad.data.cameras.source import CameraFrame
from zsad.data.cameras.store import FrameStore, frame_name, read_part_id
from zsad.data.images import load_image
from zsad.errors import ZsadError


def picture(seed: int) -> np.ndarray:
    """Noise compresses badly, so every frame's PNG has about the same size."""
    return np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def scored(store: FrameStore, name: str, seed: int, ng: bool) -> str | None:
    """What a station does per frame: write, score (elsewhere), link, journal, file."""
    relative = store.write(picture(seed), name)
    linked = store.destination(relative, ng)
    store.file_as(relative, linked)
    return linked


def test_a_frame_is_written_as_a_lossless_png_and_linked_relative_to_out(tmp_path: Path) -> None:
    store = FrameStore(tmp_path, keep="all")
    relative = store.write(picture(1), "f1")
    assert relative == "frames/pending/f1.png"
    np.testing.assert_array_equal(load_image(tmp_path / relative), picture(1))
    assert store.pending() == [relative]
    linked = store.destination(relative, ng=True)
    assert linked == "frames/ng/f1.png" and (tmp_path / relative).exists()
    store.file_as(relative, linked)
    assert not (tmp_path / relative).exists()
    np.testing.assert_array_equal(load_image(tmp_path / linked), picture(1))
    assert store.pending() == []
    assert [p.name for p in (tmp_path / "frames").rglob(".*")] == []  # no temp file left


@pytest.mark.parametrize(
    ("keep", "kept_ok", "kept_ng"),
    [("ng", False, True), ("all", True, True), ("none", False, False)],
)
def test_the_policy_decides_which_verdicts_are_kept(
    tmp_path: Path, keep: str, kept_ok: bool, kept_ng: bool
) -> None:
    store = FrameStore(tmp_path, keep=keep)
    ok = scored(store, "ok", 1, ng=False)
    ng = scored(store, "ng", 2, ng=True)
    assert (ok is not None, ng is not None) == (kept_ok, kept_ng)
    on_disk = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert on_disk == sorted(p for p in (ok, ng) if p)


def test_over_budget_the_oldest_ok_frames_go_first_and_ng_last(tmp_path: Path) -> None:
    probe = FrameStore(tmp_path / "probe")
    size = (tmp_path / "probe" / probe.write(picture(0), "x")).stat().st_size
    store = FrameStore(tmp_path / "out", keep="all", budget_bytes=int(4.5 * size))
    for i, ng in enumerate([True, False, False, True, False, False]):
        scored(store, f"f{i}", i, ng)
    # Six frames, room for four: the two oldest OK frames (f1, f2) went; both NG frames stay.
    names = sorted(p.stem for p in (tmp_path / "out/frames").rglob("*.png"))
    assert names == ["f0", "f3", "f4", "f5"]
    assert store.used_bytes <= store.budget_bytes
    for i in range(6, 9):
        scored(store, f"f{i}", i, ng=True)
    # f6 and f7 push out the last OK frames (f4, f5); with none left, f8 pushes out NG f0.
    names = sorted(p.stem for p in (tmp_path / "out/frames").rglob("*.png"))
    assert names == ["f3", "f6", "f7", "f8"]


def test_the_frame_just_settled_survives_a_budget_smaller_than_one_frame(tmp_path: Path) -> None:
    store = FrameStore(tmp_path, keep="all", budget_bytes=1)
    first = scored(store, "a", 1, ng=False)
    second = scored(store, "b", 2, ng=True)
    assert first and second and not (tmp_path / first).exists() and (tmp_path / second).exists()


def test_a_restart_counts_what_is_kept_and_lists_what_is_pending(tmp_path: Path) -> None:
    store = FrameStore(tmp_path, keep="all")
    scored(store, "old-ok", 1, ng=False)
    scored(store, "old-ng", 2, ng=True)
    unscored = store.write(picture(3), "unscored")
    crashed = tmp_path / "frames/pending/.cut.png.abc123.tmp"
    crashed.write_bytes(b"half a png")
    used = store.used_bytes
    again = FrameStore(tmp_path, keep="all", budget_bytes=used)
    assert again.used_bytes == used and again.pending() == [unscored]
    assert not crashed.exists()
    scored(again, "new-ok", 4, ng=False)
    assert not (tmp_path / "frames/ok/old-ok.png").exists()  # the oldest OK frame made room
    assert (tmp_path / "frames/ng/old-ng.png").exists()


def test_names_and_policies_are_checked_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ZsadError, match="keep-frames 'some'"):
        FrameStore(tmp_path, keep="some")
    with pytest.raises(ZsadError, match="must be a positive"):
        FrameStore(tmp_path, budget_bytes=0)
    store = FrameStore(tmp_path)
    for bad in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(ZsadError, match="frame name"):
            store.write(picture(0), bad)
    store.write(picture(0), "same")
    with pytest.raises(ZsadError, match="already there"):
        store.write(picture(1), "same")
    with pytest.raises(ZsadError, match="not a pending frame"):
        store.destination("frames/ok/same.png", ng=True)
    with pytest.raises(ZsadError, match="not a place for a kept frame"):
        store.file_as("frames/pending/same.png", "frames/pending/other.png")


def test_kept_frames_and_folders_are_readable_by_others_not_writable(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = FrameStore(tmp_path / "out", keep="all")
        linked = scored(store, "f", 0, ng=False)
    finally:
        os.umask(old)
    assert linked is not None
    assert (tmp_path / "out" / linked).stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out/frames/ok").stat().st_mode & 0o777 == 0o755


def test_the_part_id_travels_in_the_png_so_a_restart_still_knows_it(tmp_path: Path) -> None:
    store = FrameStore(tmp_path)
    tagged = store.write(picture(0), "tagged", part_id="PLC 42/ü")
    plain = store.write(picture(1), "plain")
    assert read_part_id(tmp_path / tagged) == "PLC 42/ü"
    assert read_part_id(tmp_path / plain) is None


def test_frame_names_sort_by_time_and_carry_a_safe_part_id() -> None:
    image = picture(0)
    early = frame_name(CameraFrame(image, "cam", 7, 1_700_000_000.25, "PLC/42 a"))
    late = frame_name(CameraFrame(image, "cam", 8, 1_700_000_001.5))
    assert early == "20231114T221320.250000Z-000007-PLC_42_a"
    assert late == "20231114T221321.500000Z-000008" and early < late
