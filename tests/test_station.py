"""Station mode: a hot folder fed while the station runs, bad frames, kill -9 and restart,
graceful stop, paths on stdin, thresholds, and rolling STAPS that ranks planted defects first."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import ENV, one_line_error, popen_watch, wait_for_lines, zsad
from helpers import assert_each_once as _assert_each_once
from helpers import station_records as _records
from helpers import write_frame as _png
from zsad.api.detector import Detector
from zsad.api.results import RECORD_FIELDS, RECORD_SCHEMA
from zsad.data.synthetic import render_sample
from zsad.errors import ZsadError
from zsad.formats.methods import DEFAULT_BANK
from zsad.scoring.pipeline import SetScoringConfig
from zsad.scoring.stream import RollingStaps
from zsad.station.frames import HotFolder, Rejection
from zsad.station.line.config import HttpConfig
from zsad.station.line.http import HttpSink
from zsad.station.line.hub import LineContext
from zsad.station.station import Station, StationOptions


def _station(bundle: Path, in_dir: Path, out: Path, **options) -> Station:
    detector = Detector.from_bundle(bundle, device="cpu", scoring=SetScoringConfig(device="cpu"))
    retry_s = options.pop("retry_s", 1.0)
    return Station(
        detector.stream(4, threshold=options.pop("threshold", None)),
        lambda done: HotFolder(in_dir, done, retry_s=retry_s, exclude=out),
        StationOptions(out=out, poll_s=0.05, echo=lambda line: None, **options),
    )


class _Recorder:
    """A sink that keeps every status the station hands it and says whether it was stopped."""

    name = "recorder"

    def __init__(self) -> None:
        self.statuses: list[dict] = []
        self.state = "new"

    def start(self, context: LineContext) -> None:
        context.on_status(self.statuses.append)
        self.state = "serving"

    def describe(self) -> dict:
        return {"state": self.state}

    def stop(self, timeout: float) -> None:
        self.state = "stopped"


def test_status_counts_the_journal_and_this_run_and_shows_the_sinks_stopped(
    bundle: Path, tmp_path: Path
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for i in range(5):
        _png(in_dir / f"{i}.png", i)
    (in_dir / "bad.png").write_text("a text file named like an image")
    first = _Recorder()
    _station(bundle, in_dir, out, retry_s=0.0, idle_exit_s=0.3, sinks=[first]).run()
    # A bank still empty is warming up from the very first status, not running.
    assert first.statuses[0]["state"] == "warming-up"
    for i in range(5, 8):
        _png(in_dir / f"{i}.png", i)
    second = _Recorder()
    http = HttpSink(HttpConfig("127.0.0.1:0"))
    summary = _station(
        bundle, in_dir, out, retry_s=0.0, idle_exit_s=0.3, sinks=[second, http]
    ).run()
    # The bank refilled from the journal: scoring goes on at once.
    assert second.statuses[0]["state"] == "running"
    assert second.statuses[0]["journal"] == {"scored": 5, "rejected": 1}
    assert second.statuses[0]["this_run"] == {"scored": 0, "rejected": 0}
    status = json.loads((out / "status.json").read_text())
    for final in (summary, status):
        assert final["journal"] == {"scored": 8, "rejected": 1}
        assert final["this_run"] == {"scored": 3, "rejected": 0}
        assert {name: sink["state"] for name, sink in final["sinks"].items()} == {
            "recorder": "stopped",
            "http": "stopped",
        }
    assert len(_records(out)) == 9


def test_a_folder_fed_by_another_thread_with_bad_and_half_written_files(
    bundle: Path, tmp_path: Path
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    good = [f"part_{i:02d}.png" for i in range(10)]

    def feed() -> None:
        for i, name in enumerate(good[:5]):
            _png(in_dir / name, i)
            time.sleep(0.05)
        (in_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        (in_dir / "empty.png").touch()
        # Half a PNG, then the rest 0.6 s later: retried while it changes, never rejected.
        _png(tmp_path / "whole.png", 99)
        data = (tmp_path / "whole.png").read_bytes()
        with open(in_dir / "slow.png", "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            time.sleep(0.6)
            handle.write(data[len(data) // 2 :])
        (in_dir / ".incoming.png").write_bytes(data)  # a dot-file is never a frame
        for i, name in enumerate(good[5:], start=5):
            _png(in_dir / name, i)
            time.sleep(0.05)

    feeder = threading.Thread(target=feed)
    feeder.start()
    summary = _station(bundle, in_dir, out, idle_exit_s=2.5).run()
    feeder.join()
    _assert_each_once(out, good + ["slow.png"])
    assert summary["state"] == "stopped" and summary["this_run"] == {"scored": 11, "rejected": 2}
    # Scored and rejected alike: the one record schema of every results.jsonl.
    assert {tuple(r) for r in _records(out)} == {RECORD_FIELDS}
    rejected = {r["name"]: r for r in _records(out) if r["decision"] == "rejected"}
    assert rejected.keys() == {"corrupt.png", "empty.png"}
    assert "empty" in rejected["empty.png"]["error"]
    for record in rejected.values():
        moved = out / record["rejected_to"]
        assert moved.is_file() and not (in_dir / record["name"]).exists()
        reason = moved.with_name(moved.name + ".reason.txt").read_text()
        assert record["name"] in reason and record["error"] in reason
    assert json.loads((out / "status.json").read_text())["state"] == "stopped"


def test_a_partial_last_line_is_cut_and_its_image_scored_again(
    bundle: Path, tmp_path: Path
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    names = [f"{i:02d}.png" for i in range(7)]
    for i, name in enumerate(names[:6]):
        _png(in_dir / name, i)
    _station(bundle, in_dir, out, idle_exit_s=0.2).run()
    # A write cut short by a crash: the last record half on disk.
    journal = out / "results.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-1]) + lines[-1][:25])
    _png(in_dir / names[6], 6)
    _station(bundle, in_dir, out, idle_exit_s=0.2).run()
    assert journal.read_bytes().endswith(b"\n")
    _assert_each_once(out, names)


def test_a_journal_in_the_previous_schema_is_resumed(bundle: Path, tmp_path: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    names = [f"{i:02d}.png" for i in range(7)]
    for i, name in enumerate(names[:6]):
        _png(in_dir / name, i)
    _station(bundle, in_dir, out, idle_exit_s=0.2).run()
    journal = out / "results.jsonl"
    # Schema 1 had no ``schema`` and no ``rejected_to`` on scored records.
    old = [
        {k: v for k, v in r.items() if k not in ("schema", "rejected_to")} for r in _records(out)
    ]
    journal.write_text("".join(json.dumps(r) + "\n" for r in old))
    _png(in_dir / names[6], 6)
    summary = _station(bundle, in_dir, out, idle_exit_s=0.2).run()
    assert summary["journal"] == {"scored": 7, "rejected": 0}
    scored = _assert_each_once(out, names)
    assert scored[-1]["schema"] == RECORD_SCHEMA and scored[-1]["phase"] == "stream"
    # A record from a newer zsad is refused in one line, not misread.
    journal.write_text(json.dumps({**old[0], "schema": RECORD_SCHEMA + 1}) + "\n")
    with pytest.raises(ZsadError, match="line 1: record schema .* upgrade zsad"):
        _station(bundle, in_dir, out, idle_exit_s=0.2).run()


def test_a_second_station_on_the_same_results_is_refused(bundle: Path, tmp_path: Path) -> None:
    from zsad.station.journal import Journal

    first = Journal(tmp_path / "results.jsonl")
    try:
        with pytest.raises(ZsadError, match="another zsad process"):
            Journal(tmp_path / "results.jsonl")
    finally:
        first.close()
    Journal(tmp_path / "results.jsonl").close()


@pytest.mark.slow
def test_kill_9_mid_run_then_restart_scores_every_image_exactly_once(
    bundle: Path, tmp_path: Path
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    names = [f"{i:03d}.png" for i in range(24)]
    for i, name in enumerate(names):
        _png(in_dir / name, i, "stain" if i in (9, 17) else None)
    common = ["--bundle", str(bundle), "--out", str(out), "--bank", "4", "--poll-s", "0.05"]
    # Killed twice: once just after warm-up, once mid-stream.
    for lines in (5, 12):
        run = popen_watch(str(in_dir), *common)
        wait_for_lines(out / "results.jsonl", lines, run)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
    last = popen_watch(str(in_dir), *common, "--exit-when-idle", "0.5")
    _, stderr = last.communicate(timeout=300)
    assert last.returncode == 0, stderr
    assert "resumed at image" in stderr and "bank refilled with 4" in stderr
    _assert_each_once(out, names)


@pytest.mark.slow
def test_sigterm_finishes_the_current_image_and_exits_0(bundle: Path, tmp_path: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for i in range(40):
        _png(in_dir / f"{i:03d}.png", i)
    run = popen_watch(str(in_dir), "--bundle", str(bundle), "--out", str(out), "--bank", "4")
    wait_for_lines(out / "results.jsonl", 6, run)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr
    assert "SIGTERM" in stderr
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "stopped" and status["stopped_by"] == "signal"
    assert (out / "results.jsonl").read_bytes().endswith(b"\n")
    assert 6 <= len(_records(out)) < 40
    # A clean stop leaves no frame in hand: a restart must not count it against one.
    assert not (out / "in-progress.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", [None, "staps"])
def test_the_api_stream_and_the_cli_score_every_frame_the_same_by_default(
    bundle: Path, tmp_path: Path, method: str | None
) -> None:
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    frames = [in_dir / f"{i:02d}.png" for i in range(DEFAULT_BANK + 4)]
    for i, frame in enumerate(frames):
        _png(frame, i, "scratch" if i % 9 == 8 else None)
        os.utime(frame, ns=(10**18 + i * 1000, 10**18 + i * 1000))  # arrival order
    named = [] if method is None else ["--method", method]
    with Detector.from_bundle(bundle, method=method) as det:
        stream = det.stream()
        expected = [r for frame in frames for r in stream.add(frame)] + stream.flush()
    assert [r.phase for r in expected] == ["warm-up"] * DEFAULT_BANK + ["stream"] * 4
    watched = zsad("watch", str(in_dir), "--out", str(tmp_path / "watch"), "--bundle",
                   str(bundle), "--exit-when-idle", "0.5", *named)  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    args = [sys.executable, "-m", "zsad", "infer", "--stream", "--bundle", str(bundle)]
    args += ["--out", str(tmp_path / "stdin"), *named]
    listing = "".join(f"{frame}\n" for frame in frames)
    piped = subprocess.run(args, input=listing, capture_output=True, text=True, env=ENV)
    assert piped.returncode == 0, piped.stderr
    for out in (tmp_path / "watch", tmp_path / "stdin"):
        records = sorted(_records(out), key=lambda r: r["index"])
        assert [(r["path"], r["score"], r["raw_score"], r["phase"]) for r in records] == [
            (r.path, r.score, r.raw_score, r.phase) for r in expected
        ], out.name


@pytest.mark.slow
def test_infer_stream_reads_paths_from_stdin_and_resumes(bundle: Path, tmp_path: Path) -> None:
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.png")
        _png(paths[-1], i)
    listing = "\n".join(map(str, paths[:4] + [tmp_path / "missing.png"])) + "\n"
    out = tmp_path / "out"
    args = [sys.executable, "-m", "zsad", "infer", "--stream", "--bundle", str(bundle)]
    args += ["--out", str(out), "--bank", "3", "--no-overlays"]
    first = subprocess.run(args, input=listing, capture_output=True, text=True, env=ENV)
    assert first.returncode == 0, first.stderr
    rejected = [r for r in _records(out) if r["decision"] == "rejected"]
    assert [r["error"] for r in rejected] == ["no such file"]
    # The same list again plus two new paths: only the new ones are scored.
    listing = "\n".join(map(str, paths)) + "\n"
    again = subprocess.run(args, input=listing, capture_output=True, text=True, env=ENV)
    assert again.returncode == 0, again.stderr
    assert "2 scored" in again.stderr
    _assert_each_once(out, [str(p) for p in paths])
    assert all(p.exists() for p in paths)  # a path list is never moved


@pytest.mark.slow
def test_watch_errors_are_one_line(bundle: Path, tmp_path: Path) -> None:
    one_line_error(zsad("watch", str(tmp_path / "nope"), "--out", str(tmp_path)), "not a folder")
    result = zsad(
        "watch", str(tmp_path), "--out", str(tmp_path / "o"), "--bundle", str(bundle),
        "--method", "patchcore",
    )  # fmt: skip
    one_line_error(result, "--method", "'patchcore' is not one of 'musc', 'staps', 'headclip'")


@pytest.mark.slow
def test_calibrated_threshold_is_stored_in_the_bundle_and_used(
    bundle: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    good = tmp_path / "good"
    good.mkdir()
    for i in range(20):
        _png(good / f"{i:02d}.png", 100 + i)
    result = zsad("calibrate-threshold", str(good), "--bundle", str(copy), "--bank", "4",
                  "--false-alarm-rate", "0.1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stdout)
    stored = json.loads((copy / "bundle.json").read_text())["thresholds"]["musc"]
    assert stored["score"] == entry["score"] and stored["rule"] == "false-alarm-rate"
    assert entry["good_flagged"] == 2 and stored["settings"]["bank"] == 4

    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for i in range(8):
        _png(in_dir / f"{i}.png", 200 + i, "crack" if i == 6 else None)
    result = zsad("watch", str(in_dir), "--out", str(tmp_path / "out"), "--bundle", str(copy),
                  "--bank", "4", "--exit-when-idle", "0.3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    for record in _records(tmp_path / "out"):
        assert record["threshold"] == entry["score"]
        assert record["decision"] == ("NG" if record["score"] > entry["score"] else "OK")
    # Another bank size: the threshold still applies, with a warning to recalibrate.
    result = zsad("watch", str(in_dir), "--out", str(tmp_path / "out2"), "--bundle", str(copy),
                  "--bank", "5", "--exit-when-idle", "0.3")  # fmt: skip
    assert result.returncode == 0 and "recalibrate" in result.stderr and "bank" in result.stderr
    # A threshold stored without the raw-score rule was calibrated on patch-grid maxima.
    assert stored["settings"]["image_score"] == "upsampled"
    meta = json.loads((copy / "bundle.json").read_text())
    del meta["thresholds"]["musc"]["settings"]["image_score"]
    (copy / "bundle.json").write_text(json.dumps(meta))
    watch = ("watch", str(in_dir), "--bundle", str(copy), "--bank", "4", "--exit-when-idle", "0.3")
    result = zsad(*watch, "--out", str(tmp_path / "out3"))
    assert result.returncode == 0 and "(image_score)" in result.stderr
    result = zsad(*watch, "--out", str(tmp_path / "out4"), "--image-score", "grid")
    assert result.returncode == 0 and "recalibrate" not in result.stderr


@pytest.mark.slow
def test_f1_max_threshold_from_a_labelled_folder(bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "val"
    folder.mkdir()
    rows = ["filename,label"]
    for i in range(10):
        defect = "crack" if i % 4 == 3 else None
        _png(folder / f"{i}.png", 300 + i, defect)
        rows.append(f"{i}.png,{int(defect is not None)}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    result = zsad("calibrate-threshold", str(folder), "--bundle", str(bundle), "--bank", "3",
                  "--labels", str(tmp_path / "labels.csv"), "--dry-run")  # fmt: skip
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stdout)
    assert entry["rule"] == "f1-max" and entry["defective"] == 2 and 0 < entry["f1"] <= 1
    assert "thresholds" not in json.loads((bundle / "bundle.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("category", ["wood", "fabric"])
def test_rolling_staps_ranks_planted_defects_highest(category: str) -> None:
    from zsad.api.encoders import EncoderSpec, open_encoder
    from zsad.data.synthetic import DEFECT_TYPES
    from zsad.runtime.preprocess import preprocess_image

    spec = EncoderSpec("zsad-tiny", pretrained="random", image_size=224, device="cpu")
    backend = open_encoder(spec, ("cls", "taps"))
    rolling = RollingStaps(
        SetScoringConfig(device="cpu", use_stas=False), bank=8, image_size=backend.image_size
    )
    rng = np.random.default_rng(1)
    defects = {14, 21, 29, 37}
    results = []
    for i in range(44):
        kind = DEFECT_TYPES[category][i % len(DEFECT_TYPES[category])] if i in defects else None
        image, _ = render_sample(category, rng, 128, kind)
        outputs = backend.run(preprocess_image(image, 224, backend.mean, backend.std)[None])
        results += rolling.add(outputs["taps"][0], outputs["cls"][0], i)
    ranked = [r.position for r in sorted(results, key=lambda r: -r.score)]
    assert set(ranked[:4]) == defects, ranked[:8]
    assert [r.phase for r in results[:8]] == ["warm-up"] * 8 and results[8].phase == "stream"


def test_the_hot_folder_offers_files_oldest_first_and_rejects_after_retries(
    tmp_path: Path,
) -> None:
    for i, name in enumerate(["c.png", "a.png", "b.png"]):
        _png(tmp_path / name, i)
        os.utime(tmp_path / name, ns=(10**18 + i, 10**18 + i))
    (tmp_path / "x.png.part").write_bytes(b"partial")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    done: set = set()
    folder = HotFolder(tmp_path, done, retry_s=0.3)
    order = []
    while len(order) < 3:
        item = folder.next()
        assert item is None or not isinstance(item, Rejection)
        if item is not None:
            order.append(item.name)
            done.add(item.key)
    assert order == ["c.png", "a.png", "b.png"]
    assert folder.next() is None  # bad.png: retried, not yet rejected
    time.sleep(0.35)
    rejection = folder.next()
    assert isinstance(rejection, Rejection) and rejection.name == "bad.png"
    assert "not a recognised image format" in rejection.reason
    # The same name written again later is a new frame.
    _png(tmp_path / "a.png", 7)
    os.utime(tmp_path / "a.png", ns=(2 * 10**18, 2 * 10**18))
    done.add(rejection.key)
    assert folder.next().name == "a.png"


@pytest.mark.slow
def test_bench_station_reports_throughput_and_memory(bundle: Path, tmp_path: Path) -> None:
    result = zsad("bench", "station", "--out", str(tmp_path), "--bundle", str(bundle),
                  "--frames", "16", "--bank", "4", "--defect-every", "5")  # fmt: skip
    assert result.returncode == 0, result.stderr
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["images"] == 16 and bench["config"]["backend"] == "onnxruntime-fp32-cpu"
    assert bench["images_per_s"] > 0 and bench["samples"]
    assert set(bench["stages_stream"]) >= {"encode_ms", "score_ms", "write_ms"}
    assert bench["bank"]["bank"] == 4 and 0 <= bench["image_auroc"] <= 1
    assert bench["gpu_pool_mb_end"] is None  # scoring ran with NumPy
    assert "| images | images/s |" in (tmp_path / "bench.md").read_text()


def test_a_rejection_recorded_before_a_crash_is_moved_on_restart(
    bundle: Path, tmp_path: Path
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out.mkdir()
    bad = in_dir / "bad.png"
    bad.write_bytes(b"junk")
    stat = bad.stat()
    # The journal line was written, then the process died before moving the file.
    record = {
        "index": None,
        "path": str(bad),
        "name": "bad.png",
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "score": None,
        "decision": "rejected",
        "error": "not a recognised image format",
        "rejected_to": "rejected/1_bad.png",
    }
    (out / "results.jsonl").write_text(json.dumps(record) + "\n")
    _station(bundle, in_dir, out, idle_exit_s=0.2).run()
    assert not bad.exists() and (out / "rejected" / "1_bad.png").read_bytes() == b"junk"
    assert "not a recognised" in (out / "rejected" / "1_bad.png.reason.txt").read_text()
    assert len(_records(out)) == 1


@pytest.mark.slow
def test_an_unwritable_output_is_a_one_line_error_and_resumable(
    bundle: Path, tmp_path: Path
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out.mkdir()
    for i in range(3):
        _png(in_dir / f"{i}.png", i)
    (out / "maps").write_text("a file where the maps folder should be")
    args = [str(in_dir), "--out", str(out), "--bundle", str(bundle), "--bank", "2"]
    failed = zsad("watch", *args, "--exit-when-idle", "0.2")
    assert failed.returncode == 2, failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("zsad: error: ") and "maps" in last and "restart to resume" in last
    assert not (out / "results.jsonl").read_text()
    (out / "maps").unlink()
    result = zsad("watch", *args, "--exit-when-idle", "0.2")
    assert result.returncode == 0, result.stderr
    _assert_each_once(out, ["0.png", "1.png", "2.png"])


@pytest.mark.slow
def test_calibrate_threshold_without_readable_images_says_so(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.png").touch()
    (tmp_path / "text.png").write_text("hello")
    result = zsad("calibrate-threshold", str(tmp_path), "--bundle", str(bundle))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "zsad: error: calibrate-threshold: none of the 2 image(s) could be read"
    assert any("empty.png" in line and "file is empty" in line for line in lines[:-1])


def test_a_hot_folder_says_once_why_an_image_is_not_taken(tmp_path: Path) -> None:
    from PIL import Image

    _png(tmp_path / "a.png", 1)
    Image.new("RGB", (8, 8)).save(tmp_path / "camera.gif")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "notes.txt").write_text("shift notes")  # not an image: left alone in silence
    done: set = set()
    folder = HotFolder(tmp_path, done, retry_s=0.3)
    item = folder.next()
    assert item is not None and item.name == "a.png"
    done.add(item.key)
    lines = folder.notices()
    for _ in range(3):
        assert folder.next() is None
    assert folder.notices() == []  # said once, however often the folder is scanned
    assert len(lines) == 3, lines
    said = {Path(line.split(": ")[1]).name: line for line in lines}
    assert "GIF images are not read" in said["camera.gif"]
    assert "cannot be followed" in said["loop.png"] and "cannot be followed" in said["gone.png"]
    # A file that leaves and comes back is said again.
    (tmp_path / "camera.gif").unlink()
    folder.next()
    Image.new("RGB", (8, 8)).save(tmp_path / "camera.gif")
    folder.next()
    assert [Path(line.split(": ")[1]).name for line in folder.notices()] == ["camera.gif"]


@pytest.mark.slow
def test_the_station_prints_what_its_hot_folder_passes_over(bundle: Path, tmp_path: Path) -> None:
    from PIL import Image

    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for i in range(3):
        _png(in_dir / f"{i}.png", 300 + i)
    Image.new("RGB", (8, 8)).save(in_dir / "camera.gif")
    result = zsad("watch", str(in_dir), "--out", str(tmp_path / "out"), "--bundle", str(bundle),
                  "--bank", "2", "--exit-when-idle", "0.5")  # fmt: skip
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "not taken" in line]
    assert len(said) == 1 and "camera.gif" in said[0] and said[0].startswith("zsad: "), said


def test_a_file_rewritten_while_it_decodes_is_taken_once_as_its_settled_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zsad.station import frames

    _png(tmp_path / "part.png", 0)
    final = tmp_path / "final.png"
    _png(final, 1)
    decode = frames.as_rgb_array
    calls = []

    def decode_while_the_writer_finishes(path: Path, max_side: int | None = None) -> np.ndarray:
        calls.append(path.stat().st_size)
        image = decode(path, max_side)
        if len(calls) == 1:  # the writer finishes the file under the decoder's feet
            shutil.copyfile(final, path)
            os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
        return image

    monkeypatch.setattr(frames, "as_rgb_array", decode_while_the_writer_finishes)
    done: set[frames.FrameKey] = set()
    folder = HotFolder(tmp_path, done, retry_s=0.3)
    taken = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(f.name == "part.png" for f in taken):
        frame = folder.next()
        if frame is not None:
            taken.append(frame)
            done.add(frame.key)
    part = [f for f in taken if f.name == "part.png"]
    stat = (tmp_path / "part.png").stat()
    # One frame, keyed by the settled file: the next scan finds nothing new to score.
    assert [f.key for f in part] == [("part.png", stat.st_size, stat.st_mtime_ns)]
    assert len(calls) >= 2
    assert all(f.name != "part.png" for f in iter(folder.next, None))
