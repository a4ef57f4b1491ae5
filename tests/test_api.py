"""The Python API: zsad.Detector over a bundle (torch-free), its results and its lifecycle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import BLOCKER, TORCH, zsad
from zsad.api.results import RECORD_FIELDS, RECORD_SCHEMA
from zsad.data.synthetic import make_dataset
from zsad.errors import ZsadError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("api-data")
    make_dataset(root, seed=2, categories=["wood"], size=64)
    return sorted((root / "wood" / "test").rglob("*.png"))[:10]


@pytest.mark.slow
def test_import_zsad_is_light() -> None:
    code = (
        "import sys, zsad; zsad.Detector; zsad.Result; "
        "heavy = [m for m in ('torch', 'sklearn', 'scipy', 'open_clip') if m in sys.modules]; "
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


@pytest.mark.slow
def test_score_set_matches_the_cli_records(bundle: Path, images: list[Path], tmp_path) -> None:
    import zsad as api

    with api.Detector.from_bundle(bundle, device="cpu") as det:
        # A staps bundle serves both training-free methods; unnamed, it runs the default, musc.
        assert det.name == "musc" and det.image_size == 56
        scored = det.score_set(images)
    out = tmp_path / "cli"
    result = zsad("infer", *map(str, images), "--bundle", str(bundle), "--out", str(out),
                  "--no-overlays", "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r.path for r in scored] == [line["path"] for line in lines]
    np.testing.assert_allclose(scored.scores, [line["score"] for line in lines], rtol=1e-5)
    record = scored.results[0].to_record(map=lines[0]["map"])
    # One schema for every writer: the same fields, in the same order, the line's id first.
    assert list(lines[0]) == ["id", *record] == list(RECORD_FIELDS)
    assert [(r["id"], r["index"], r["phase"]) for r in lines[:2]] == [(0, 0, "set"), (1, 1, "set")]
    assert lines[0]["schema"] == RECORD_SCHEMA
    assert scored.results[0].anomaly_map.shape == (56, 56)


def test_score_set_scores_each_image_the_same_in_any_order(
    bundle: Path, images: list[Path]
) -> None:
    from zsad import Detector

    with Detector.from_bundle(bundle, device="cpu") as det:
        listed = {r.path: r.score for r in det.score_set(images)}
        backwards = {r.path: r.score for r in det.score_set(images[::-1], batch_size=3)}
    assert listed.keys() == backwards.keys()
    for path, score in listed.items():
        assert backwards[path] == pytest.approx(score, rel=1e-4), path


def test_images_may_be_arrays_pil_or_paths_and_bad_ones_are_reported(
    bundle: Path, images: list[Path]
) -> None:
    from zsad import Detector

    pixels = np.asarray(Image.open(images[1]).convert("RGB"))
    inputs = [images[0], pixels, Image.open(images[2]), np.zeros((4, 4), np.float32), images[3]]
    with Detector.from_bundle(bundle, device="cpu") as det:
        scored = det.score_set(inputs)
    assert [r.ok for r in scored] == [True, True, True, False, True]
    assert "dtype float32" in scored.results[3].error
    assert scored.results[1].path is None and scored.results[0].path == str(images[0])


def test_every_registered_method_has_its_scorers() -> None:
    from zsad.api.scorers import SCORERS
    from zsad.formats.methods import METHODS

    assert SCORERS.keys() == METHODS.keys()


def test_predict_on_staps_explains_what_to_use(bundle: Path, images: list[Path]) -> None:
    from zsad import Detector

    det = Detector.from_bundle(bundle, device="cpu")
    with pytest.raises(ZsadError, match="score_set.*stream"):
        det.predict(images[0])
    assert det.stream(bank=4).scorer.method == "musc"
    with pytest.raises(ZsadError, match="exported for --method staps"):
        Detector.from_bundle(bundle, method="headclip", device="cpu")
    det.close()
    with pytest.raises(ZsadError, match="closed"):
        det.backend.run(np.zeros((1, 3, 56, 56), np.float32))


def test_stream_holds_the_warm_up_then_scores_each_image(bundle: Path, images: list[Path]) -> None:
    from zsad import Detector

    with Detector.from_bundle(bundle, device="cpu", threshold=0.5) as det:
        stream = det.stream(bank=4)
        returned = [len(stream.add(path)) for path in images[:6]]
        assert returned == [0, 0, 0, 4, 1, 1]
        assert stream.flush() == []
        short = det.stream(bank=4)
        for path in images[:3]:
            assert short.add(path) == []
        held = short.flush()
    assert [r.index for r in held] == [0, 1, 2]
    assert all(r.decision in ("OK", "NG") and r.threshold == 0.5 for r in held)
    assert held[0].path == str(images[0])


@pytest.mark.slow
def test_the_example_runs_where_torch_cannot_be_imported(bundle: Path, images: list[Path]) -> None:
    script = f"BLOCKED = {set(TORCH)!r}\n{BLOCKER}\n" + (
        "import runpy, sys\n"
        f"sys.argv = ['detect_bundle.py', {str(bundle)!r}, {str(images[0].parents[1])!r}]\n"
        f"runpy.run_path({str(ROOT / 'examples' / 'detect_bundle.py')!r}, run_name='__main__')\n"
        "assert not any(m.split('.')[0] == 'torch' for m in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Detector('musc'" in result.stdout
    assert result.stdout.count("set    ") == 5 and "stream #" in result.stdout
    # Named relative to the given folder: good/000.png and crack/000.png are told apart.
    scored = [line for line in result.stdout.splitlines() if line.startswith(("set", "stream"))]
    named = [line.rsplit(":", 1)[0].split()[-1] for line in scored]
    assert named and all(len(Path(name).parts) == 2 for name in named)
