"""What a newcomer hits first: bad --out, bad option values, partial failures, default sizes and
the model list, each answered before any work and in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import TORCH, one_line_error, zsad
from zsad.api.encoders import model_image_size
from zsad.data.synthetic import make_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hardening")
    make_dataset(root, seed=3, categories=["grid"], size=64)
    return root / "grid" / "test" / "good"


def test_an_unusable_out_is_refused_before_any_work(folder: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for out, needle in ((a_file, "is not a folder"), (a_file / "sub", "cannot write there")):
        result = zsad("infer", str(folder), "--model", "zsad-tiny", "--out", str(out))
        # One line and nothing else: the model was never built, no image was encoded.
        one_line_error(result, f"--out {out}", needle)


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        (["--embed", "foo"], "'foo' is not one of 'dct', 'svd'"),
        (["--cluster", "foo"], "'foo' is not one of 'bgmm', 'kmeans'"),
        (["--beta", "2"], "--beta"),
        (["--topmin", "5"], "--topmin"),
        (["--order", "sideways"], "--order"),
        (["--score-device", "tpu"], "--score-device"),
        (["--device", "tpu"], "--device"),
        (["--method", "magic"], "--method"),
        (["--batch-size", "0"], "--batch-size"),
        (["--bank", "1"], "--bank"),
    ],
)
def test_invalid_option_values_are_one_line_usage_errors(
    folder: Path, tmp_path: Path, option: list[str], needle: str
) -> None:
    result = zsad("infer", str(folder), "--model", "zsad-tiny", "--out", str(tmp_path), *option)
    one_line_error(result, needle, "zsad infer --help")


def test_device_cuda_without_a_gpu_is_refused_up_front(folder: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = zsad("infer", str(folder), "--model", "zsad-tiny", "--device", "cuda")
    one_line_error(result, "--device cuda", "--device cpu")


def test_exit_status_tells_partial_failure_from_success(folder: Path, tmp_path: Path) -> None:
    images = sorted(folder.glob("*.png"))[:4]
    args = ["--model", "zsad-tiny", "--no-progress"]
    good = zsad("infer", *map(str, images), "--out", str(tmp_path / "good"), *args)
    assert good.returncode == 0, good.stderr
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    partial = zsad("infer", *map(str, images), str(broken), "--out", str(tmp_path / "p"), *args)
    assert partial.returncode == 3, partial.stderr
    assert "scored 4 of 5 images" in partial.stdout


def test_the_default_input_size_comes_from_the_model(folder: Path, tmp_path: Path) -> None:
    assert model_image_size("ViT-L-14-336", None) == 518
    assert model_image_size("ViT-B-16", None) == 224  # 518 is not a multiple of its patch
    assert model_image_size("zsad-tiny", None) == 224
    assert model_image_size("ViT-B-16", 320) == 320
    images = sorted(folder.glob("*.png"))[:3]
    out = tmp_path / "out"
    result = zsad("infer", *map(str, images), "--model", "zsad-tiny", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "--model zsad-tiny: 224 px input" in result.stderr
    assert json.loads((out / "summary.json").read_text())["image_size"] == 224


def test_models_lists_what_zsad_runs() -> None:
    result = zsad("models", "--json")
    assert result.returncode == 0, result.stderr
    models = {m["name"]: m for m in map(json.loads, result.stdout.splitlines())}
    assert models["ViT-L-14-336"]["default_image_size"] == 518
    assert "headclip" in models["zsad-tiny"]["methods"]
    assert not [name for name in models if "SigLIP" in name or "coca" in name or "RN50" in name]
    blocked = zsad("models", block=TORCH)
    one_line_error(blocked, "zsad models", "zsad[export]")


def test_recursive_takes_images_in_subfolders(folder: Path, tmp_path: Path) -> None:
    parent = folder.parent  # good/ and defect folders, no images of its own
    flat = zsad("infer", str(parent), "--model", "zsad-tiny", "--out", str(tmp_path / "a"))
    one_line_error(flat, "no images found", "--recursive")
    deep = zsad("infer", str(parent), "-r", "--model", "zsad-tiny", "--no-overlays",
                "--out", str(tmp_path / "b"))  # fmt: skip
    assert deep.returncode == 0, deep.stderr
    expected = sum(1 for p in parent.rglob("*.png"))
    assert f"scored {expected} of {expected} images" in deep.stdout


def test_eval_and_watch_check_out_before_any_work(folder: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    root = folder.parents[2]  # the MVTec-layout root
    result = zsad("eval", str(root), "--model", "zsad-tiny", "--out", str(a_file))
    one_line_error(result, f"--out {a_file}", "is not a folder")
    result = zsad("watch", str(folder), "--model", "zsad-tiny", "--out", str(a_file))
    one_line_error(result, f"--out {a_file}", "is not a folder")


def test_a_failed_run_leaves_no_empty_out_behind(folder: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    made = tmp_path / "new" / "out"
    result = zsad("infer", str(empty), "--model", "zsad-tiny", "--out", str(made))
    assert result.returncode == 2 and "empty.png: cannot read image" in result.stderr
    assert not (tmp_path / "new").exists()  # both folders it made are gone again
    kept = tmp_path / "kept"
    (kept / "earlier").mkdir(parents=True)
    result = zsad("infer", str(empty), "--model", "zsad-tiny", "--out", str(kept))
    assert result.returncode == 2
    assert (kept / "earlier").is_dir()  # a folder the user had is never removed


def test_out_is_never_read_back_as_input(folder: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(folder.glob("*.png"))[:4]:
        shutil.copy(path, images)
    args = ("--model", "zsad-tiny", "--image-size", "56", "--no-progress")
    same = zsad("infer", str(images), "--out", str(images / "."), *args)
    one_line_error(same, f"--out {images / '.'}", "is the input folder", "results")
    assert not (images / "overlays").exists()
    inputs = ([str(images), "-r"], [str(images / "**" / "*.png")])
    for run in range(2):  # the second run finds the first run's overlays under OUT
        for given in inputs:
            result = zsad("infer", *given, "--out", str(images / "results"), *args)
            assert result.returncode == 0, result.stderr
            assert "scored 4 of 4 images" in result.stdout, (run, given, result.stdout)
    assert len(list((images / "results" / "overlays").glob("*.png"))) == 4


@pytest.mark.parametrize("size", ["1050", "99988"])
def test_an_image_size_past_the_grid_limit_is_one_line(
    folder: Path, tmp_path: Path, size: str
) -> None:
    # 1050 px = 75 x 14: one patch past the limit; 99988 px asked torch for 13 GB.
    result = zsad("infer", str(folder), "--model", "zsad-tiny", "--image-size", size,
                  "--out", str(tmp_path / "out"))  # fmt: skip
    one_line_error(result, f"--image-size {size}", "at most 1036 px", "74 x 74", "patch count")
    assert not (tmp_path / "out").exists()


def test_eval_lists_the_images_it_left_out_and_exits_3(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, seed=3, categories=["grid"], n_train=0, n_good=3, n_defect=2, size=64)
    broken = root / "grid" / "test" / "good" / "broken.png"
    broken.write_text("not an image")
    out = tmp_path / "eval"
    result = zsad("eval", str(root), "--model", "zsad-tiny", "--image-size", "56",
                  "--no-progress", "--out", str(out))  # fmt: skip
    assert result.returncode == 3, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["excluded"] == 1
    [entry] = metrics["categories"]["grid"]["excluded"]
    assert entry["path"] == str(broken) and "cannot read image" in entry["error"]
    assert f"zsad: skipped {broken}" in result.stderr
    assert "1 labelled image could not be read" in result.stderr
    assert "left out of these metrics" in (out / "metrics.md").read_text()
