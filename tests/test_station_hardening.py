"""Station hardening: OUT inside (or as) the hot folder, huge frames, frames that kill the process,
users' non-image files beside the frames, and a hot folder that goes missing mid-run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from helpers import BUNDLE_SIZE, ENV, one_line_error, wait_until
from helpers import assert_each_once as _assert_each_once
from helpers import station_records as _records
from helpers import write_frame as _png
from zsad.api.detector import Detector
from zsad.api.overlay import (
    OVERLAY_MAX_SIDE,
    OVERLAY_MIN_SIDE,
    colorize,
    legend_height,
    save_overlay,
)
from zsad.api.records import save_result_files
from zsad.api.results import Result
from zsad.data.images import ImageLoadError, load_image, load_image_bounded
from zsad.errors import ZsadError
from zsad.runtime.preprocess import decode_side
from zsad.scoring.pipeline import SetScoringConfig
from zsad.station.frames import HotFolder, Rejection
from zsad.station.line.hub import LineHub
from zsad.station.poison import IN_PROGRESS, POISON_REASON
from zsad.station.run import check_watch_folders
from zsad.station.station import Station, StationOptions

CLI = "import sys\nfrom zsad.cli.app import main\nsys.argv[0] = 'zsad'\nmain()\n"
DECODE_SIDE = decode_side(BUNDLE_SIZE)


def _cli(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=cwd,
    )


def _station(
    bundle: Path,
    in_dir: Path,
    out: Path,
    *,
    bank: int = 2,
    run: Callable[..., Any] | None = None,
    retry_s: float = 1.0,
    **options: Any,
) -> Station:
    """A station on a hot folder, decoding as `zsad watch` does; ``run`` wraps backend.run."""
    detector = Detector.from_bundle(bundle, device="cpu", scoring=SetScoringConfig(device="cpu"))
    if run is not None:
        encode = detector.backend.run
        detector.backend.run = lambda pixels: run(pixels, encode)  # type: ignore[method-assign]
    options.setdefault("echo", lambda line: None)
    return Station(
        detector.stream(bank),
        lambda done: HotFolder(in_dir, done, retry_s=retry_s, exclude=out, max_side=DECODE_SIDE),
        StationOptions(out=out, poll_s=0.05, **options),
    )


def _flat(pixels: np.ndarray) -> bool:
    """A flat grey frame (every channel constant): the tests' stand-in for a poison frame."""
    return float(np.ptp(pixels, axis=(2, 3)).max()) == 0.0


def _grey(path: Path) -> None:
    Image.new("RGB", (40, 30), (128, 128, 128)).save(path)


def _arrive_in_order(folder: Path, names: list[str]) -> None:
    """Give the files increasing modification times: arrival order is mtime order."""
    for i, name in enumerate(names):
        os.utime(folder / name, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))


# ---------------------------------------------------------------------- 1. OUT and the hot folder


@pytest.mark.slow
def test_out_as_the_hot_folder_is_a_one_line_error_and_writes_nothing(
    bundle: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "D"
    folder.mkdir()
    _png(folder / "a.png", 0)
    # Relative, with a trailing slash: the same folder however it is spelled.
    result = _cli("watch", "D", "--out", "./D/", "--bundle", str(bundle),
                  "--exit-when-idle", "1", cwd=tmp_path, timeout=60)  # fmt: skip
    one_line_error(result, "--out D: is the hot folder itself")
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]


def test_out_as_the_hot_folder_is_refused_through_symlinks_and_before_it_exists(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "D"
    folder.mkdir()
    (tmp_path / "link").symlink_to(folder)
    for out in (folder, tmp_path / "link", folder / "sub" / ".."):
        with pytest.raises(ZsadError, match="hot folder itself"):
            check_watch_folders(folder, out)
    with pytest.raises(ZsadError, match="hot folder itself"):
        HotFolder(folder, set(), exclude=tmp_path / "link")
    check_watch_folders(folder, folder / "results")  # inside: allowed, and not made here
    assert not (folder / "results").exists()


@pytest.mark.slow
def test_out_inside_the_hot_folder_is_never_scanned(bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "D"
    folder.mkdir()
    names = [f"{i}.png" for i in range(3)]
    for i, name in enumerate(names):
        _png(folder / name, i)
    result = _cli("watch", "D", "--out", "D/results", "--bundle", str(bundle), "--bank", "2",
                  "--poll-s", "0.05", "--exit-when-idle", "1", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = folder / "results"
    _assert_each_once(out, names)
    assert [r for r in _records(out) if r["decision"] == "rejected"] == []
    assert not (out / "rejected").exists()
    assert sorted(p.name for p in folder.iterdir()) == [*names, "results"]


def test_the_scan_skips_out_nested_deeper_made_later_or_spelled_otherwise(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (tmp_path / "alias").symlink_to(root)
    _png(root / "frame.png", 0)
    # OUT does not exist yet, is two levels down, and is named through a symlinked parent.
    folder = HotFolder(root, set(), retry_s=0.0, exclude=tmp_path / "alias" / "a" / "out")
    (root / "a" / "out" / "overlays").mkdir(parents=True)
    _png(root / "a" / "out" / "overlays" / "00000_frame.png", 1)
    _png(root / "a" / "kept.png", 2)
    seen = []
    while (item := folder.next()) is not None:
        seen.append(item.name)
        folder.done.add(item.key)
    assert sorted(seen) == ["a/kept.png", "frame.png"]


# ---------------------------------------------------------------------- 2a. huge frames


def test_load_image_bounded_keeps_load_images_guarantees(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(small).save(tmp_path / "small.png")
    np.testing.assert_array_equal(load_image_bounded(tmp_path / "small.png", 40), small)

    # A wide JPEG stored sideways (EXIF orientation 6): upright, then bounded.
    wide = Image.new("RGB", (1200, 600), (200, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    wide.save(tmp_path / "sideways.jpg", exif=exif.tobytes())
    upright = load_image_bounded(tmp_path / "sideways.jpg", 100)
    assert upright.shape == (100, 50, 3) and upright.dtype == np.uint8
    assert load_image(tmp_path / "sideways.jpg").shape == (1200, 600, 3)
    assert np.abs(upright.reshape(-1, 3).mean(0) - (200, 40, 40)).max() < 6

    # 16-bit grey is scaled to 8 bit, not clipped, at the reduced size too.
    grey16 = np.full((300, 200), 65535, np.uint16)
    grey16[:, 100:] = 257 * 10
    Image.fromarray(grey16).save(tmp_path / "deep.png")
    deep = load_image_bounded(tmp_path / "deep.png", 60)
    assert deep.shape == (60, 40, 3) and deep[:, :18].min() == 255 and deep[:, 22:].max() == 10

    # A palette image is averaged, not sampled.
    Image.new("P", (400, 400), 3).save(tmp_path / "palette.png")
    assert load_image_bounded(tmp_path / "palette.png", 64).shape == (64, 64, 3)

    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(ImageLoadError) as caught:
        load_image_bounded(tmp_path / "x.png", 64)
    assert "x.png" in str(caught.value) and "\n" not in str(caught.value)


def test_saved_overlay_has_a_legend_with_score_and_colour_bar(tmp_path: Path) -> None:
    image = np.full((40, 60, 3), 128, np.uint8)
    save_overlay(tmp_path / "o.png", image, np.zeros((4, 6), np.float32), 0.0, 2.0, score=0.75)
    saved = np.asarray(Image.open(tmp_path / "o.png").convert("RGB")).astype(int)
    # A small image is enlarged so the legend's text stays legible.
    band = legend_height(OVERLAY_MIN_SIDE)
    assert saved.shape == (round(OVERLAY_MIN_SIDE * 40 / 60) + band, OVERLAY_MIN_SIDE, 3)
    row = saved[-band // 2]
    low, high = colorize(np.array([0.0, 1.0])).astype(int)
    # The bar runs from the colour of the range's low end to that of its high end.
    near_low = np.abs(row - low).sum(axis=1) <= 6
    assert near_low.any() and (np.abs(row - high).sum(axis=1) <= 6).any()
    dark = saved[-band:].sum(axis=2) < 200
    assert dark[:, : int(np.argmax(near_low))].sum() > 50  # the score and the low end's value
    assert dark[:, -band:].any()  # the high end's value


def test_overlays_are_saved_at_a_bounded_resolution(tmp_path: Path) -> None:
    image = np.zeros((1500, 3000, 3), np.uint8)
    save_overlay(tmp_path / "o.png", image, np.ones((7, 7), np.float32), 0.0, 1.0)
    legend = legend_height(OVERLAY_MAX_SIDE)
    assert Image.open(tmp_path / "o.png").size == (OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE // 2 + legend)
    # Drawn from the file (a held warm-up frame): decoded at the overlay's size.
    Image.new("RGB", (2400, 1800), (9, 9, 9)).save(tmp_path / "big.jpg")
    result = Result(str(tmp_path / "big.jpg"), 1.0, np.ones((4, 4), np.float32), 8)
    files = save_result_files(tmp_path / "out", 0, result, None, (0.0, 2.0))
    assert Image.open(tmp_path / "out" / files["overlay"]).size == (1024, 768 + legend)


@pytest.mark.slow
def test_a_huge_frame_is_decoded_and_drawn_at_a_bounded_size(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    _png(in_dir / "a.png", 0)
    _png(in_dir / "c.png", 2)
    # 6000 x 4000 (24 MP): the wood texture, enlarged.
    tile = np.asarray(Image.open(in_dir / "a.png"))
    Image.fromarray(np.tile(tile, (63, 94, 1))[:4000, :6000]).save(in_dir / "b.jpg", quality=90)
    _arrive_in_order(in_dir, ["a.png", "b.jpg", "c.png"])
    held: dict[str, tuple[int, ...]] = {}
    process = Station._process

    def spy(station: Station, frame: Any) -> None:
        held[frame.name] = frame.image.shape
        process(station, frame)

    monkeypatch.setattr(Station, "_process", spy)
    station = _station(bundle, in_dir, out, idle_exit_s=0.3)
    tracemalloc.start()
    try:
        station.run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _assert_each_once(out, ["a.png", "b.jpg", "c.png"])
    assert held["b.jpg"] == (DECODE_SIDE * 2 // 3, DECODE_SIDE, 3)
    # Drawn at the decoded size, or enlarged to the smallest size whose legend stays legible.
    bound = max(min(DECODE_SIDE, OVERLAY_MAX_SIDE), OVERLAY_MIN_SIDE)
    for record in _records(out):
        width, height = Image.open(out / record["overlay"]).size
        assert max(width, height - legend_height(width)) <= bound
    # The full frame as RGB alone is 3 bytes a pixel; drawing it cost about 100.
    assert peak < 6000 * 4000, f"{peak / 2**20:.0f} MiB of NumPy memory at the peak"


# ---------------------------------------------------------------------- 2a. a bundle that lies


@pytest.mark.slow
def test_a_bundle_whose_graph_is_another_size_is_a_one_line_error(
    bundle: Path, tmp_path: Path
) -> None:
    liar = tmp_path / "liar"
    shutil.copytree(bundle, liar)
    meta = json.loads((liar / "bundle.json").read_text())
    meta["image_size"] = 2 * BUNDLE_SIZE
    (liar / "bundle.json").write_text(json.dumps(meta))
    (tmp_path / "in").mkdir()
    _png(tmp_path / "in" / "a.png", 0)
    needles = (f"takes {BUNDLE_SIZE}x{BUNDLE_SIZE} px", f"says image_size {2 * BUNDLE_SIZE}",
               str(liar / "bundle.json"))  # fmt: skip
    for args in (
        ["infer", "in/a.png", "--out", "res"],
        ["calibrate-threshold", "in", "--bank", "2"],
        ["watch", "in", "--out", "station", "--exit-when-idle", "0.5"],
    ):
        result = _cli(*args, "--bundle", str(liar), "--device", "cpu", cwd=tmp_path, timeout=60)
        one_line_error(result, *needles)


# ---------------------------------------------------------------------- 2b. frames that kill

DIES_ON_FLAT_FRAMES = """
import os, sys
from pathlib import Path
import numpy as np
import zsad
from zsad.station.run import watch_folder

bundle, in_dir, out = map(Path, sys.argv[1:4])
det = zsad.Detector.from_bundle(bundle, device="cpu")
encode = det.backend.run

def run(pixels):
    # A flat grey frame stands in for one that kills the process (the OOM killer, a crash).
    if float(np.ptp(pixels, axis=(2, 3)).max()) == 0.0:
        os._exit(137)
    return encode(pixels)

det.backend.run = run
watch_folder(det, in_dir, out, bank=2, idle_exit_s=0.3, poll_s=0.05)
"""


@pytest.mark.slow
def test_a_frame_at_three_deaths_in_a_row_in_its_own_work_is_rejected(
    bundle: Path, tmp_path: Path
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    good = ["g0.png", "g1.png", "g2.png", "g3.png"]
    for i, name in enumerate(good):
        _png(in_dir / name, i)
    _grey(in_dir / "poison.png")
    _arrive_in_order(in_dir, ["g0.png", "g1.png", "poison.png", "g2.png", "g3.png"])
    args = [sys.executable, "-c", DIES_ON_FLAT_FRAMES, str(bundle), str(in_dir), str(out)]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, capture_output=True, text=True, timeout=180, env=ENV)

    for deaths in (0, 1, 2):
        died = run()
        assert died.returncode == 137, died.stderr
        marker = json.loads((out / IN_PROGRESS).read_text())
        assert (marker["name"], marker["step"]) == ("poison.png", "encode")
        assert marker["deaths"] == deaths
        assert "poison.png" not in {r["name"] for r in _records(out)}
        assert (in_dir / "poison.png").exists()
    assert "trying it again" in died.stderr and "2 so far" in died.stderr
    last = run()
    assert last.returncode == 0, last.stderr
    assert f"rejected {in_dir / 'poison.png'}: {POISON_REASON}" in last.stderr
    _assert_each_once(out, good)
    (rejected,) = [r for r in _records(out) if r["decision"] == "rejected"]
    assert rejected["name"] == "poison.png" and rejected["error"] == POISON_REASON
    moved = out / rejected["rejected_to"]
    assert moved.is_file() and not (in_dir / "poison.png").exists()
    assert POISON_REASON in moved.with_name(moved.name + ".reason.txt").read_text()
    assert not (out / IN_PROGRESS).exists()


@pytest.mark.slow
def test_a_stop_by_signal_or_idle_does_not_count_and_a_crash_does(
    bundle: Path, tmp_path: Path
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for i in range(3):
        _png(in_dir / f"{i}.png", i)
    _grey(in_dir / "grey.png")
    _arrive_in_order(in_dir, ["0.png", "1.png", "grey.png", "2.png"])
    stations: list[Station] = []

    def second_signal(pixels: np.ndarray, encode: Callable[..., Any]) -> Any:
        if _flat(pixels):
            # What two SIGTERMs do: the first asks to finish, the second stops at once.
            stations[0]._on_signal(15, None)
            stations[0]._on_signal(15, None)
        return encode(pixels)

    stations.append(_station(bundle, in_dir, out, run=second_signal, idle_exit_s=0.3))
    with pytest.raises(KeyboardInterrupt):
        stations[0].run()
    assert not (out / IN_PROGRESS).exists()

    def crash(pixels: np.ndarray, encode: Callable[..., Any]) -> Any:
        if _flat(pixels):
            raise MemoryError("stand-in for a frame too big to encode")
        return encode(pixels)

    with pytest.raises(MemoryError):
        _station(bundle, in_dir, out, run=crash, idle_exit_s=0.3).run()
    marker = json.loads((out / IN_PROGRESS).read_text())
    assert (marker["name"], marker["deaths"], marker["step"]) == ("grey.png", 0, "encode")

    # One death on it so far: tried again, scored, and the marker is gone after an idle exit.
    lines: list[str] = []
    _station(bundle, in_dir, out, idle_exit_s=0.3, echo=lines.append).run()
    assert any("trying it again" in line for line in lines)
    _assert_each_once(out, ["0.png", "1.png", "grey.png", "2.png"])
    assert not (out / IN_PROGRESS).exists()


@pytest.mark.slow
def test_a_marker_left_by_a_dead_run(bundle: Path, tmp_path: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out.mkdir()
    for i in range(3):
        _png(in_dir / f"{i}.png", i)
    _arrive_in_order(in_dir, ["0.png", "1.png", "2.png"])

    def leave_marker(name: str, deaths: int, step: str | None = "encode") -> None:
        stat = (in_dir / name).stat()
        marker = {"path": str(in_dir / name), "name": name, "size": stat.st_size,
                  "mtime_ns": stat.st_mtime_ns, "deaths": deaths, "step": step}  # fmt: skip
        (out / IN_PROGRESS).write_text(json.dumps(marker))

    # Three deaths in 2.png's own work: rejected before anything else happens.
    leave_marker("2.png", 2)
    _station(bundle, in_dir, out, idle_exit_s=0.3).run()
    assert [(r["name"], r["error"]) for r in _records(out) if r["index"] is None] == [
        ("2.png", POISON_REASON)
    ]
    _assert_each_once(out, ["0.png", "1.png"])
    # A marker naming a frame the journal lists: the run died after it, not on it.
    leave_marker("1.png", 2)
    summary = _station(bundle, in_dir, out, idle_exit_s=0.3).run()
    assert summary["this_run"]["rejected"] == 0 and not (out / IN_PROGRESS).exists()
    assert len(_records(out)) == 3


def _die(*_: Any) -> None:
    raise MemoryError("stand-in for a kill -9 while the sinks start")


def _dies_in_hand(
    bundle: Path, in_dir: Path, out: Path, name: str, where: str, deaths: int
) -> None:
    """Run a station that dies ``deaths`` times in a row with ``name`` in hand, in the step
    ``where`` ("encode": in its own work, as a kill from outside mostly lands; "write": while
    records are written), then one that lives: the frame must be scored, not rejected."""

    def killed(pixels: np.ndarray, encode: Callable[..., Any]) -> Any:
        if _flat(pixels):
            raise MemoryError("stand-in for a kill -9 from outside")
        return encode(pixels)

    for _ in range(deaths):
        if where == "encode":
            station = _station(bundle, in_dir, out, run=killed, idle_exit_s=0.3)
        else:
            station = _station(bundle, in_dir, out, idle_exit_s=0.3)
            append = station._append

            def killed_writing(record: dict[str, Any], append: Any = append) -> None:
                if record["name"] == name and record["index"] is not None:
                    raise MemoryError("stand-in for a kill -9 from outside")
                append(record)

            station._append = killed_writing  # type: ignore[method-assign]
        with pytest.raises(MemoryError):
            station.run()
    lines: list[str] = []
    _station(bundle, in_dir, out, idle_exit_s=0.3, echo=lines.append).run()
    assert not [r for r in _records(out) if r["decision"] == "rejected"], lines
    assert (in_dir / name).exists()


@pytest.mark.slow
def test_deaths_outside_a_frames_own_work_are_not_counted(bundle: Path, tmp_path: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for i in range(3):
        _png(in_dir / f"{i}.png", i)
    _arrive_in_order(in_dir, ["0.png", "1.png", "2.png"])
    # Killed three times while 2.png's record is written (by a service manager, say).
    _dies_in_hand(bundle, in_dir, out, "2.png", "write", deaths=3)
    _assert_each_once(out, ["0.png", "1.png", "2.png"])


@pytest.mark.slow
def test_two_kills_in_a_frames_own_work_do_not_reject_it(bundle: Path, tmp_path: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for i in range(2):
        _png(in_dir / f"{i}.png", i)
    _grey(in_dir / "grey.png")
    _arrive_in_order(in_dir, ["0.png", "1.png", "grey.png"])
    _dies_in_hand(bundle, in_dir, out, "grey.png", "encode", deaths=2)
    _assert_each_once(out, ["0.png", "1.png", "grey.png"])
    assert not (out / IN_PROGRESS).exists()


@pytest.mark.slow
def test_a_death_during_start_up_keeps_the_count_and_adds_nothing(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out.mkdir()
    _png(in_dir / "0.png", 0)
    _png(in_dir / "1.png", 1)
    _arrive_in_order(in_dir, ["0.png", "1.png"])
    stat = (in_dir / "0.png").stat()
    marker = {"path": str(in_dir / "0.png"), "name": "0.png", "size": stat.st_size,
              "mtime_ns": stat.st_mtime_ns, "deaths": 0, "step": "encode"}  # fmt: skip
    (out / IN_PROGRESS).write_text(json.dumps(marker))
    with monkeypatch.context() as patch:
        patch.setattr(LineHub, "start", _die)
        for _ in range(3):
            with pytest.raises(MemoryError):
                _station(bundle, in_dir, out).run()
            left = json.loads((out / IN_PROGRESS).read_text())
            assert (left["deaths"], left["step"]) == (1, None)
    lines: list[str] = []
    _station(bundle, in_dir, out, idle_exit_s=0.3, echo=lines.append).run()
    assert any("before it was in hand; not counted against it (1 of 3" in x for x in lines), lines
    _assert_each_once(out, ["0.png", "1.png"])


@pytest.mark.slow
def test_a_restart_after_a_death_in_warm_up_scores_as_a_clean_run(
    bundle: Path, tmp_path: Path
) -> None:
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    names = [f"{i}.png" for i in range(6)]
    for i, name in enumerate(names):
        _png(in_dir / name, i, "stain" if i == 1 else None)
    _arrive_in_order(in_dir, names)
    clean, out = tmp_path / "clean", tmp_path / "out"
    _station(bundle, in_dir, clean, bank=4, idle_exit_s=0.3).run()

    # Dies after two of the four warm-up records, before the overlay range is saved.
    dying = _station(bundle, in_dir, out, bank=4, idle_exit_s=0.3)
    append = dying._append

    def die_after_two(record: dict[str, Any]) -> None:
        if dying.journal.count == 2:
            raise MemoryError("stand-in for a kill while the warm-up records are written")
        append(record)

    dying._append = die_after_two  # type: ignore[method-assign]
    with pytest.raises(MemoryError):
        dying.run()
    assert [r["name"] for r in _records(out)] == ["0.png", "1.png"]
    _station(bundle, in_dir, out, bank=4, idle_exit_s=0.3).run()

    _assert_each_once(out, names)
    expected = {r["name"]: r for r in _records(clean)}
    for record in _records(out):
        want = expected[record["name"]]
        assert record["index"] == want["index"] and record["phase"] == want["phase"]
        assert record["raw_score"] == pytest.approx(want["raw_score"], abs=1e-5)
        assert record["score"] == pytest.approx(want["score"], abs=1e-5)
        assert record["overlay"] is not None and want["overlay"] is not None
    state = json.loads((out / "station-state.json").read_text())
    want_state = json.loads((clean / "station-state.json").read_text())
    assert state["map_range"] == pytest.approx(want_state["map_range"], abs=1e-5)


# ---------------------------------------------------------------------- 3. users' other files


@pytest.mark.slow
def test_files_not_named_like_images_are_left_alone(bundle: Path, tmp_path: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    (in_dir / "docs").mkdir(parents=True)
    others = ["notes.txt", "labels.csv", "Thumbs.db", "desktop.ini", "docs/README"]
    for name in others:
        (in_dir / name).write_text(f"the user's {name}\n")
    before = {name: ((in_dir / name).read_bytes(), (in_dir / name).stat().st_mtime_ns)
              for name in others}  # fmt: skip
    images = ["0.png", "1.PNG", "2.JPG", "3.png"]
    for i, name in enumerate(images):
        _png(in_dir / name, i)
    (in_dir / "bad.png").write_text("a text file named like an image")
    summary = _station(bundle, in_dir, out, retry_s=0.0, idle_exit_s=0.3).run()
    after = {name: ((in_dir / name).read_bytes(), (in_dir / name).stat().st_mtime_ns)
             for name in others}  # fmt: skip
    assert after == before
    _assert_each_once(out, images)
    assert [r["name"] for r in _records(out) if r["decision"] == "rejected"] == ["bad.png"]
    assert summary["this_run"]["rejected"] == 1 and not (in_dir / "bad.png").exists()
    assert not {r["name"] for r in _records(out)} & set(others)


# ---------------------------------------------------------------------- 4. a hot folder that goes


@pytest.mark.slow
def test_a_hot_folder_that_goes_missing_is_reported_and_picked_up_again(
    bundle: Path, tmp_path: Path
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for i in range(2):
        _png(in_dir / f"{i}.png", i)
    _arrive_in_order(in_dir, ["0.png", "1.png"])
    lines: list[str] = []
    station = _station(bundle, in_dir, out, echo=lines.append, status_interval_s=60.0)
    summary: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: summary.update(station.run()))
    runner.start()
    try:
        journal = out / "results.jsonl"
        wait_until(lambda: journal.exists() and journal.read_bytes().count(b"\n") == 2, "2 records")
        # Gone at once, as an unmounted share is (the files with it).
        away = tmp_path / "away"
        in_dir.rename(away)

        def status() -> dict[str, Any]:
            return json.loads((out / "status.json").read_text())

        wait_until(lambda: status()["source"] == "missing", "status.json to say missing")
        assert status()["source_missing_since"]
        missing = [line for line in lines if "is missing" in line]
        assert missing == [
            f"zsad: hot folder {in_dir} is missing (No such file or directory); "
            "waiting for it to come back"
        ]
        # Back with the files it had, which are not scored again, and a new one.
        away.rename(in_dir)
        _png(in_dir / "2.png", 2)
        wait_until(lambda: journal.read_bytes().count(b"\n") >= 3, "the new image's record")
        wait_until(lambda: status()["source"] == "ok", "status.json to say ok")
        assert status()["source_missing_since"] is None
        assert sum("is back" in line for line in lines) == 1
    finally:
        station._stop.set()
        runner.join(timeout=60)
    assert summary["state"] == "stopped"
    _assert_each_once(out, ["0.png", "1.png", "2.png"])


def test_the_hot_folder_keeps_what_it_scored_while_it_cannot_be_listed(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    _png(root / "a.png", 0)
    folder = HotFolder(root, set(), retry_s=0.0)
    item = folder.next()
    assert item is not None and not isinstance(item, Rejection)
    folder.done.add(item.key)
    hidden = tmp_path / "away"
    root.rename(hidden)
    assert folder.next() is None and folder.missing_since is not None
    hidden.rename(root)
    assert folder.next() is None and folder.missing_since is None
    assert folder.done == {item.key}
