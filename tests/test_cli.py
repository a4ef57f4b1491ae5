"""The zsad command line, run as a user would: exit codes, one-line errors, files written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import ENV, one_line_error, zsad
from zsad.data.synthetic import make_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, seed=0, categories=["fabric", "grid"])
    return root


def test_every_command_explains_itself() -> None:
    top = zsad("--help")
    assert top.returncode == 0
    commands = [
        "make-data",
        "models",
        "infer",
        "eval",
        "demo",
        "calibrate",
        "export",
        "build-engine",
        "weights",
        "doctor",
    ]
    for command in commands:
        assert command in top.stdout
        result = zsad(command, "--help")
        assert result.returncode == 0, result.stderr
        assert "Usage" in result.stdout and len(result.stdout.splitlines()) > 5


def test_infer_scores_good_files_and_reports_bad_ones(dataset: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    sources = sorted((dataset / "fabric" / "test").glob("*/*.png"))
    for i, source in enumerate(sources):
        (images / f"{i:02d}_{source.parent.name}.png").write_bytes(source.read_bytes())
    (images / "zz_empty.png").touch()
    (images / "zz_text.png").write_text("not an image")
    (images / "zz_truncated.png").write_bytes(sources[0].read_bytes()[:200])
    out = tmp_path / "out"
    result = zsad(
        "infer", str(images), "--out", str(out), "--model", "zsad-tiny", "--image-size", "112"
    )
    assert result.returncode == 3, result.stderr  # done, with unreadable images
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == len(sources) + 3
    bad = {Path(r["path"]).name: r["error"] for r in records if r["error"]}
    assert set(bad) == {"zz_empty.png", "zz_text.png", "zz_truncated.png"}
    assert all("cannot read image" in message for message in bad.values())
    good = [r for r in records if r["error"] is None]
    assert all(np.isfinite(r["score"]) for r in good)
    first = good[0]
    assert np.load(out / first["map"]).shape == (112, 112)
    assert (out / first["overlay"]).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == len(sources) and summary["failed"] == 3
    assert result.stderr.count("zsad: skipped") == 3


def test_eval_writes_the_documented_metrics_file(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = zsad(
        "eval",
        str(dataset),
        "--categories",
        "grid",
        "--model",
        "zsad-tiny",
        "--image-size",
        "112",
        "--out",
        str(out),
        "--no-stas",
        "--beta",
        "0",
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["categories"]) == {"grid"}
    assert set(metrics["mean"]["image"]) == {"auroc", "ap", "f1_max"}
    assert set(metrics["mean"]["pixel"]) == {"auroc", "ap", "f1_max", "aupro", "iou_max"}
    assert metrics["settings"]["use_stas"] is False
    assert "| grid |" in (out / "metrics.md").read_text()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["infer", "/nonexistent/folder", "--model", "zsad-tiny"], ["/nonexistent/folder"]),
        (["eval", "/nonexistent/root", "--model", "zsad-tiny"], ["/nonexistent/root"]),
        (
            ["infer", "x.png", "--model", "zsad-tiny", "--weights", "/no/such.safetensors"],
            ["--weights"],
        ),
        (["infer", "x.png", "--model", "ViT-Q-99"], ["--model", "ViT-Q-99"]),
        (["infer", "x.png", "--model", "zsad-tiny", "--r-list", "1,2"], ["--r-list"]),
        (["infer", "x.png", "--model", "zsad-tiny", "--method", "magic"], ["method"]),
    ],
)
def test_user_mistakes_are_one_line_errors(
    tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    image = tmp_path / "x.png"
    image.write_text("not an image")
    result = subprocess.run(
        [sys.executable, "-m", "zsad", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=ENV,
        timeout=300,
    )
    one_line_error(result, *needles)


def test_a_set_of_unreadable_images_is_an_error_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "a.png").touch()
    (tmp_path / "b.png").write_text("text")
    result = zsad("infer", str(tmp_path), "--model", "zsad-tiny", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "mutual scoring needs at least 2" in last
    assert "cannot read image" in last and "1 more unreadable" in last  # says why


def test_infer_keeps_going_past_missing_inputs_in_the_order_given(
    dataset: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i, source in enumerate(sorted((dataset / "grid" / "test" / "good").glob("*.png"))[:4]):
        (images / f"{i}.png").write_bytes(source.read_bytes())
    listed = ["3.png", "1.png", "gone.png", "0.png", "2.png"]
    (tmp_path / "list.txt").write_text("".join(f"images/{name}\n" for name in listed))
    out = tmp_path / "out"
    result = zsad(
        "infer", str(tmp_path / "list.txt"), str(tmp_path / "absent.png"),
        str(tmp_path / "*.bmp"), str(images), "--out", str(out), "--model", "zsad-tiny",
        "--image-size", "56", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr  # done, with unreadable inputs
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [Path(r["path"]).name for r in records] == [*listed, "absent.png"]
    errors = {Path(r["path"]).name: r["error"] for r in records if r["error"]}
    assert set(errors) == {"gone.png", "absent.png"}
    assert all("no such file" in message for message in errors.values())
    assert "*.bmp: no images found" in result.stderr


def test_demo_says_what_it_does_at_once_and_where_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import zsad.evaluation.demo
    from zsad.cli.detect_cmds import demo

    said_first: list[str] = []

    def run_demo(out: Path, **_: object) -> dict[str, object]:
        said_first.append(capsys.readouterr().err)
        metrics = {"image": {"auroc": 0.9}}
        return {"categories": {"wood": metrics, "grid": metrics}, "mean": metrics}

    monkeypatch.setattr(zsad.evaluation.demo, "run_demo", run_demo)
    demo(out=tmp_path)
    assert said_first[0].startswith(f"generating a defect dataset in {tmp_path / 'data'}")
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3:] == [
        f"metrics:  {tmp_path / 'eval' / 'metrics.md'} and metrics.json",
        f"results:  {tmp_path / 'eval'}/CATEGORY/results.jsonl, for CATEGORY in wood, grid",
        f"overlays: {tmp_path / 'eval'}/CATEGORY/overlays/*.png",
    ]
