"""The OpenVINO backend: fp32 parity with ONNX Runtime (taps, CLS, final scores) on the tiny bundle
and on real DINOv2 weights, bf16 and int8 opt-in, what --device auto picks, and its one-line
errors. CI installs the openvino extra; a machine without it skips (CI fails instead)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import TORCH, one_line_error, require_service, zsad
from zsad.data.synthetic import make_dataset
from zsad.errors import ZsadError
from zsad.runtime import choose
from zsad.runtime.open import open_backend

require_service(importlib.util.find_spec("openvino") is not None, "openvino is not installed")


@pytest.fixture(scope="module")
def pixels(bundle: Path) -> np.ndarray:
    size = json.loads((bundle / "bundle.json").read_text())["image_size"]
    return np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(bundle: Path, pixels: np.ndarray) -> dict[str, np.ndarray]:
    with open_backend(bundle, device="cpu", backend="onnxruntime") as ort:
        return ort.run(pixels)


def _bf16_here() -> bool:
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_fp32_matches_onnx_runtime_and_is_asked_for_explicitly(bundle, pixels, reference) -> None:
    with open_backend(bundle, device="cpu", backend="openvino") as ov:
        assert ov.name == "openvino-fp32-cpu"
        # Left to its default, OpenVINO computes bf16 on CPUs that have it.
        assert ov.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
        out = ov.run(pixels)
    assert set(out) == set(reference) == {"cls", "taps"}
    for name in reference:
        assert out[name].dtype == np.float32 and out[name].shape == reference[name].shape
        np.testing.assert_allclose(out[name], reference[name], atol=2e-5)


def test_int8_compresses_the_weights_and_stays_close(bundle, pixels, reference) -> None:
    with open_backend(bundle, device="cpu", precision="int8") as ov:
        assert ov.name == "openvino-int8-cpu"
        out = ov.run(pixels)
    taps, ref = out["taps"].ravel(), reference["taps"].ravel()
    cosine = taps @ ref / (np.linalg.norm(taps) * np.linalg.norm(ref))
    assert cosine > 0.999
    assert np.abs(taps - ref).max() > 1e-4  # the weights really were rounded


@pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None or not _bf16_here(), reason="no bf16 CPU"
)
def test_bf16_is_opt_in_and_moves_the_outputs(bundle, pixels, reference) -> None:
    with open_backend(bundle, device="cpu", backend="openvino", precision="bf16") as ov:
        assert ov.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16"
        out = ov.run(pixels)
    assert 1e-4 < np.abs(out["taps"] - reference["taps"]).max() < 0.1


def test_outputs_on_the_device_come_back_as_cupy(bundle, pixels, reference, monkeypatch) -> None:
    uploads = []
    numpy_cupy = type(sys)("cupy")
    numpy_cupy.asarray = lambda a: uploads.append(a.shape) or np.asarray(a)
    monkeypatch.setitem(sys.modules, "cupy", numpy_cupy)
    with open_backend(bundle, device="cpu", backend="openvino", outputs_on="device") as ov:
        out = ov.run(pixels)
    assert sorted(uploads) == sorted(v.shape for v in reference.values())
    np.testing.assert_allclose(out["cls"], reference["cls"], atol=2e-5)


@pytest.mark.slow
def test_infer_on_openvino_matches_onnx_runtime_without_torch(bundle, tmp_path) -> None:
    make_dataset(tmp_path / "data", seed=1, categories=["grid"], n_train=1, n_good=4, n_defect=2)
    images = str(tmp_path / "data" / "grid" / "test" / "*" / "*.png")
    scores = {}
    for backend in ("onnxruntime", "openvino"):
        out = tmp_path / backend
        run = zsad(
            "infer", images, "--bundle", str(bundle), "--backend", backend, "--out", str(out),
            "--no-overlays", "--no-progress", block=TORCH,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert json.loads((out / "summary.json").read_text())["backend"] == f"{backend}-fp32-cpu"
        lines = (out / "results.jsonl").read_text().splitlines()
        scores[backend] = {r["path"]: r["score"] for r in map(json.loads, lines)}
    assert scores["openvino"].keys() == scores["onnxruntime"].keys()
    assert len(scores["openvino"]) == 4 + 3 * 2
    a, b = (np.array(list(scores[k].values())) for k in ("openvino", "onnxruntime"))
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--backend", "openvino", "--device", "cuda"], ["--device cuda", "Intel GPU"]),
        (["--backend", "onnxruntime", "--precision", "bf16"], ["--precision bf16", "openvino"]),
        (["--backend", "onnxruntime", "--device", "gpu"], ["--device 'gpu'"]),
    ],
)
def test_impossible_choices_are_one_line_errors(bundle, tmp_path, args, needles) -> None:
    make_dataset(tmp_path, seed=0, categories=["grid"], n_train=1, n_good=2, n_defect=1)
    result = zsad(
        "infer", str(tmp_path / "grid" / "test"), "-r", "--bundle", str(bundle), *args,
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    one_line_error(result, *needles)


@pytest.mark.slow
def test_backend_options_need_a_bundle(tmp_path) -> None:
    make_dataset(tmp_path, seed=0, categories=["grid"], n_train=1, n_good=2, n_defect=1)
    result = zsad(
        "infer", str(tmp_path / "grid" / "test"), "-r", "--model", "zsad-tiny",
        "--backend", "openvino", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    one_line_error(result, "--bundle DIR")


def test_an_engine_refuses_openvino(bundle, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    (copy / "encoder.engine").write_bytes(b"")
    for options in ({"backend": "openvino"}, {"precision": "int8"}):
        with pytest.raises(ZsadError, match="--engine runs on TensorRT"):
            open_backend(copy / "encoder.engine", **options)


def test_without_openvino_the_error_names_the_extra(bundle, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ZsadError, match=r"pip install 'zsad\[openvino\]'"):
        open_backend(bundle, backend="openvino")


@pytest.mark.parametrize(
    ("vendor", "cuda", "device", "chosen"),
    [
        ("GenuineIntel", False, "auto", "openvino"),
        ("AuthenticAMD", False, "auto", "onnxruntime"),  # measured level with ONNX Runtime
        ("GenuineIntel", True, "auto", "onnxruntime"),
        ("GenuineIntel", False, "cpu", "onnxruntime"),  # an explicit device keeps the reference
        ("AuthenticAMD", False, "gpu", "openvino"),  # only OpenVINO runs Intel GPUs
    ],
)
def test_device_auto_picks_openvino_where_it_is_faster(
    monkeypatch, capsys, vendor, cuda, device, chosen
) -> None:
    import onnxruntime

    monkeypatch.setattr(choose, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(choose.platform, "machine", lambda: "x86_64")
    providers = ["CUDAExecutionProvider"] * cuda + ["CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    assert choose.choose_backend("auto", device, None) == chosen
    said = capsys.readouterr().err
    assert said.count("\n") == (chosen == "openvino" and device == "auto")
    assert not said or said.startswith("--device auto: OpenVINO on the CPU (an Intel CPU and no")


def test_bf16_or_int8_imply_openvino() -> None:
    assert choose.choose_backend("auto", "cpu", "int8") == "openvino"
    assert choose.choose_backend("auto", "cpu", "bf16") == "openvino"
    assert choose.choose_backend("auto", "cpu", "fp32") == "onnxruntime"


@pytest.fixture(scope="module")
def real_bundle(real_dinov2, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real-bundle")
    exported = zsad(
        "export", "--model", "dinov2_vits14", "--weights", str(real_dinov2.weights),
        "--image-size", "224", "--out", str(out),
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    return out


@pytest.mark.slow
def test_fp32_parity_holds_with_real_weights(real_bundle, tmp_path) -> None:
    """Real DINOv2 activations have outliers random weights lack; fp32 must still agree."""
    from zsad.data.images import load_image
    from zsad.formats.backbones import IMAGENET_MEAN, IMAGENET_STD
    from zsad.runtime.preprocess import preprocess_batch

    make_dataset(tmp_path, seed=2, categories=["disc"], n_train=1, n_good=2, n_defect=1)
    paths = sorted((tmp_path / "disc" / "test").rglob("*.png"))[:3]
    pixels = preprocess_batch([load_image(p) for p in paths], 224, IMAGENET_MEAN, IMAGENET_STD)
    with open_backend(real_bundle, device="cpu", backend="onnxruntime") as ort:
        reference = ort.run(pixels)
    with open_backend(real_bundle, device="cpu", backend="openvino") as ov:
        out = ov.run(pixels)
    for name in reference:
        scale = np.abs(reference[name]).max()
        assert np.abs(out[name] - reference[name]).max() / scale < 1e-5, name


@pytest.mark.slow
def test_bench_encoder_times_openvino_beside_onnx_runtime(bundle, tmp_path) -> None:
    args = ["bench", "encoder", "--bundle", str(bundle), "--device", "cpu", "--batch", "1"]
    args += ["--backend", "onnxruntime,openvino-fp32,openvino-int8", "--iters", "2"]
    args += ["--min-time", "0", "--warmup", "1", "--rounds", "1", "--out", str(tmp_path)]
    result = zsad(*args)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [r["backend"] for r in rows] == ["onnxruntime", "openvino-fp32", "openvino-int8"]
    # Same graph, same FLOP count: the rows compare as fractions of one matmul peak.
    assert len({r["gflop_per_image"] for r in rows}) == 1
    assert all(r["fraction_of_peak"] > 0 for r in rows)


@pytest.mark.slow
def test_bench_pipeline_runs_backends_one_after_another(bundle, tmp_path) -> None:
    args = ["bench", "pipeline", "--bundle", str(bundle), "--device", "cpu", "--n", "3"]
    args += ["--backend", "onnxruntime,openvino-fp32", "--out", str(tmp_path)]
    result = zsad(*args)
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "bench.json").read_text())
    runners = [(r["method"], r["runner"]) for r in data["rows"]]
    assert runners == [("staps", "onnxruntime-fp32-cpu"), ("staps", "openvino-fp32-cpu")]
    assert set(data["config"]["outputs_on"]) == {"onnxruntime-fp32-cpu", "openvino-fp32-cpu"}


def test_bench_times_openvino_on_the_cpu_only() -> None:
    from zsad.bench.backends import check_device

    check_device("openvino-bf16", "cpu")
    with pytest.raises(ZsadError, match="timed on the CPU"):
        check_device("openvino-bf16", "cuda:0")
