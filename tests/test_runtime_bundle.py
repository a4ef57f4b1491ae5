"""Bundles at run time: `zsad export` then `zsad infer --bundle`, without torch, and every mismatch
(altered files, image size, method, engine version and GPU) as a one-line error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import BUNDLE_SIZE, TORCH, one_line_error, zsad
from zsad.api.detector import Detector
from zsad.api.encoders import EncoderSpec, open_encoder
from zsad.data.synthetic import make_dataset
from zsad.errors import ZsadError
from zsad.formats.bundle import Bundle, sha256_file
from zsad.runtime.open import open_backend

SIZE = BUNDLE_SIZE


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, seed=0, categories=["grid"], n_train=1, n_good=4, n_defect=2, size=64)
    return str(root / "grid" / "test" / "*" / "*.png")


@pytest.mark.parametrize("which", ["bundle", "headclip_bundle"])
def test_a_bundle_is_read_once_per_open(
    which: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[Path] = []
    load = Bundle.load.__func__  # type: ignore[attr-defined]

    def counted(cls: type[Bundle], root: Path) -> Bundle:
        read.append(Path(root))
        return load(cls, root)

    monkeypatch.setattr(Bundle, "load", classmethod(counted))
    root = request.getfixturevalue(which)
    for path in (root, root / "encoder.onnx"):
        read.clear()
        with Detector.from_bundle(path, device="cpu") as detector:
            assert detector.method.name == ("musc" if which == "bundle" else "headclip")
        assert read == [root], path


def _copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(bundle, target)
    return target


def _scores(out: Path) -> dict[str, float]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return {Path(r["path"]).name + r["path"]: r["score"] for r in map(json.loads, lines)}


@pytest.mark.slow
def test_infer_with_the_bundle_matches_the_pytorch_path_without_torch(
    bundle: Path, images: str, tmp_path: Path
) -> None:
    common = ["--no-overlays", "--no-progress"]
    torch_run = zsad(
        "infer", images, "--model", "zsad-tiny", "--image-size", str(SIZE),
        "--out", str(tmp_path / "torch"), *common,
    )  # fmt: skip
    assert torch_run.returncode == 0, torch_run.stderr
    onnx_run = zsad(
        "infer", images, "--bundle", str(bundle), "--out", str(tmp_path / "onnx"), *common,
        block=TORCH,
    )  # fmt: skip
    assert onnx_run.returncode == 0, onnx_run.stderr
    reference, scores = _scores(tmp_path / "torch"), _scores(tmp_path / "onnx")
    assert reference.keys() == scores.keys() and len(scores) == 4 + 3 * 2
    np.testing.assert_allclose(list(scores.values()), list(reference.values()), atol=1e-4)
    summary = json.loads((tmp_path / "onnx" / "summary.json").read_text())
    assert summary["backend"] == "onnxruntime-fp32-cpu" and summary["image_size"] == SIZE


def test_altered_or_truncated_files_are_refused(bundle: Path, tmp_path: Path) -> None:
    copy = _copy(bundle, tmp_path)
    model = copy / "encoder.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ZsadError, match="SHA-256 differs"):
        open_backend(copy, device="cpu")
    model.write_bytes(bytes(data[:-10]))
    with pytest.raises(ZsadError, match="truncated"):
        open_backend(copy, device="cpu")
    shutil.copyfile(bundle / "encoder.onnx", model)
    open_backend(copy, device="cpu")  # the restored copy loads again
    (copy / "encoder.fp16.onnx").unlink()
    with pytest.raises(ZsadError, match="encoder.fp16.onnx is missing"):
        Bundle.load(copy)


@pytest.mark.slow
def test_image_size_and_method_mismatches_are_errors(bundle: Path, images: str) -> None:
    result = zsad("infer", images, "--bundle", str(bundle), "--image-size", "112")
    one_line_error(result, "--image-size 112", f"{SIZE} px")
    backend = open_backend(bundle, device="cpu")
    with pytest.raises(ZsadError, match=f"takes \\(B, 3, {SIZE}, {SIZE}\\)"):
        backend.run(np.zeros((1, 3, 112, 112), np.float32))
    with pytest.raises(ZsadError, match="exported for --method staps"):
        open_encoder(EncoderSpec(device="cpu", bundle=bundle), ("cls", "local"))
    with pytest.raises(ZsadError, match="pass it with --engine"):
        open_encoder(EncoderSpec(device="cpu", bundle=Path("a.engine")), ("cls",))


def test_not_a_bundle_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ZsadError, match="no bundle.json"):
        open_backend(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ZsadError, match="format 'something-else'"):
        open_backend(tmp_path)


def _with_fake_engine(bundle: Path, tmp_path: Path, flavour: str, version: str) -> Path:
    copy = _copy(bundle, tmp_path)
    engine = copy / "encoder.engine"
    engine.write_bytes(b"not really an engine")
    meta = json.loads((copy / "bundle.json").read_text())
    meta["engine"] = {
        "file": "encoder.engine",
        "flavour": flavour,
        "tensorrt_version": version,
        "compute_capabilities": ["8.6"],
        "batch": {"min": 1, "opt": 4, "max": 4},
    }
    meta["files"]["encoder.engine"] = {
        "sha256": sha256_file(engine),
        "bytes": engine.stat().st_size,
    }
    (copy / "bundle.json").write_text(json.dumps(meta))
    return engine


@pytest.mark.slow
def test_engine_of_a_missing_flavour_names_the_package(
    bundle: Path, images: str, tmp_path: Path
) -> None:
    engine = _with_fake_engine(bundle, tmp_path, "trt", "10.3.0")
    result = zsad("infer", images, "--engine", str(engine), block=(*TORCH, "tensorrt"))
    one_line_error(result, "TensorRT is not installed", "pip install 'zsad[trt]'")


def test_engine_from_another_tensorrt_version_is_refused(bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx")
    engine = _with_fake_engine(bundle, tmp_path, "rtx", "0.0.1")
    with pytest.raises(ZsadError, match="built with TensorRT-RTX 0.0.1, this machine has"):
        open_backend(engine, device="cuda")
    with pytest.raises(ZsadError, match="needs a GPU"):
        open_backend(engine, device="cpu")


@pytest.mark.slow
def test_build_engine_adds_an_rtx_engine_without_torch(bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx")
    copy = _copy(bundle, tmp_path)
    result = zsad("build-engine", str(copy), "--compute-capability", "8.9", block=TORCH)
    assert result.returncode == 0, result.stderr
    assert "built in" in result.stderr
    loaded = Bundle.load(copy)
    assert loaded.engine is not None and loaded.engine.compute_capabilities == ("8.9",)
    loaded.file("encoder.engine")  # hash recorded
    assert json.loads((copy / "bundle.json").read_text())["parity"]  # export's record kept
