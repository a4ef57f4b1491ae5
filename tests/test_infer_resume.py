"""`zsad infer` journals its subsets: a killed run started again scores each image exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ENV, zsad
from zsad.api.journal import SetJournal
from zsad.data.synthetic import make_dataset


def _record(subset: int, number: int) -> dict:
    return {"id": number, "schema": 2, "subset": subset, "path": f"{subset}-{number}.png"}


def test_a_cut_subset_is_dropped_and_the_complete_ones_kept(tmp_path: Path) -> None:
    run = {"paths": ["a", "b", "c", "d"]}
    with SetJournal(tmp_path, run, [0, 0, 1, 1]) as journal:
        journal.append([_record(0, 0), _record(0, 1)])
    whole = (tmp_path / "results.jsonl").read_bytes()
    # A kill inside the second subset's write: one whole line, one cut short.
    with open(tmp_path / "results.jsonl", "ab") as handle:
        handle.write(json.dumps(_record(1, 2)).encode() + b'\n{"id": 3, "sch')
    with SetJournal(tmp_path, run, [1, 1, 0, 0]) as journal:
        assert journal.done == {0} and journal.subsets == [0, 0, 1, 1]
        assert journal.count == 2 and [r["id"] for r in journal.records()] == [0, 1]
    assert (tmp_path / "results.jsonl").read_bytes() == whole
    with SetJournal(tmp_path, {"paths": ["e"]}, [0]) as journal:
        assert journal.done == set() and journal.count == 0 and list(journal.records()) == []
        # Another run keeps the earlier results until it has its own first subset.
        assert (tmp_path / "results.jsonl").read_bytes() == whole
        journal.append([_record(0, 0)])
    assert (tmp_path / "results.jsonl").read_bytes() == json.dumps(_record(0, 0)).encode() + b"\n"


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.mark.slow
def test_killed_infer_resumes_at_its_subset(bundle: Path, tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", seed=5, categories=["wood"], n_good=40, n_defect=4, size=64)
    folder = tmp_path / "data" / "wood" / "test"
    n_images = sum(1 for _ in folder.rglob("*.png"))
    args = [str(folder), "-r", "--bundle", str(bundle), "--device", "cpu", "--subset-size", "5"]
    whole = tmp_path / "whole"
    assert zsad("infer", *args, "--out", str(whole)).returncode == 0
    expected = {r["path"]: r["score"] for r in _lines(whole / "results.jsonl")}
    assert len(expected) == n_images

    out = tmp_path / "killed"
    script = "import sys\nfrom zsad.cli.app import main\nsys.argv[0] = 'zsad'\nmain()\n"
    command = [sys.executable, "-c", script, "infer", *args, "--out", str(out)]
    process = subprocess.Popen(command, env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not _lines(out / "results.jsonl") and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = len(_lines(out / "results.jsonl"))
    assert 0 < written < n_images, "the run must be killed part way"

    again = zsad("infer", *args, "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr
    records = _lines(out / "results.jsonl")
    assert sorted(r["path"] for r in records) == sorted(expected)
    assert [r["id"] for r in records] == list(range(n_images))
    assert {r["path"]: r["score"] for r in records} == expected
