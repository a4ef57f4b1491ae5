"""Encoder outputs kept on the device: ONNX Runtime's IOBinding into CuPy buffers, the set's
arrays allocated where the outputs live, and STAPS set scoring reading its taps there.

Without a GPU the CuPy stand-in (conftest ``numpy_as_gpu``) runs the same code: the CPU provider
binds host buffers, which ``outputs_on="device"`` hands over through the array module."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from zsad.errors import ZsadError
from zsad.formats.bundle import FP16_ONNX, FP32_ONNX, Bundle
from zsad.runtime.onnx_backend import CPU, CUDA, OnnxBackend

SIZE = 56


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch, numpy_as_gpu: Any) -> Any:
    """The stand-in as ``cupy``, recording every array its ``asarray`` and ``empty`` return."""
    made: list[Any] = []

    def recorded(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            array = getattr(np, name)(*args, **kwargs)
            made.append(array)
            return array

        return call

    numpy_as_gpu.asarray = recorded("asarray")
    numpy_as_gpu.empty = recorded("empty")
    numpy_as_gpu.made = made
    monkeypatch.setitem(sys.modules, "cupy", numpy_as_gpu)
    return numpy_as_gpu


def _pixels(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 3, SIZE, SIZE)).astype(np.float32)


@pytest.mark.parametrize("filename", [FP32_ONNX, FP16_ONNX])
def test_device_outputs_come_through_iobinding_and_equal_host_outputs(
    bundle: Path, gpu: Any, monkeypatch: pytest.MonkeyPatch, filename: str
) -> None:
    loaded = Bundle.load(bundle)
    host = OnnxBackend(loaded, filename, providers=[CPU]).run(_pixels())
    backend = OnnxBackend(loaded, filename, providers=[CPU], outputs_on="device")
    assert backend.outputs_on == "device"
    bound: list[Any] = []
    run_bound = backend.session.run_with_iobinding

    def spy(binding: Any, *args: Any) -> Any:
        bound.append(binding)
        return run_bound(binding, *args)

    monkeypatch.setattr(backend.session, "run_with_iobinding", spy)
    monkeypatch.setattr(backend.session, "run", lambda *a, **k: pytest.fail("not bound"))
    gpu.made.clear()
    device = backend.run(_pixels())
    assert len(bound) == 1
    assert set(device) == set(host)
    for name, value in device.items():
        # Handed over by the device array module, not a NumPy copy made afterwards.
        assert any(value is made for made in gpu.made), name
        assert value.dtype == np.float32 and value.shape == host[name].shape
        np.testing.assert_allclose(value, host[name], atol=1e-6)


def _float16_model(path: Path, free_channels: bool = False) -> SimpleNamespace:
    """A one-output ONNX file whose 'cls' (the per-channel pixel mean) is float16, and a
    stand-in bundle around it."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    channels = "channels" if free_channels else 3
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[2, 3], keepdims=0),
            helper.make_node("Cast", ["mean"], ["cls"], to=TensorProto.FLOAT16),
        ],
        "half",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", channels, 4, 4])],
        [helper.make_tensor_value_info("cls", TensorProto.FLOAT16, ["batch", channels])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return SimpleNamespace(
        file=lambda name: path, image_size=4, mean=(0.5,) * 3, std=(0.25,) * 3, outputs=("cls",)
    )


def test_float16_outputs_are_bound_as_float16_and_widened(tmp_path: Path, gpu: Any) -> None:
    stand_in = _float16_model(tmp_path / "half.onnx")
    pixels = np.random.default_rng(1).normal(size=(2, 3, 4, 4)).astype(np.float32)
    host = OnnxBackend(stand_in, "half.onnx", providers=[CPU]).run(pixels)["cls"]
    gpu.made.clear()
    device = OnnxBackend(stand_in, "half.onnx", providers=[CPU], outputs_on="device").run(pixels)
    assert [a.dtype for a in gpu.made if a.shape == (2, 3)][0] == np.float16  # the bound buffer
    assert device["cls"].dtype == np.float32
    np.testing.assert_array_equal(device["cls"], host)
    np.testing.assert_allclose(host, pixels.mean(axis=(2, 3)), atol=2e-3)


def test_free_dimensions_other_than_the_batch_are_refused(tmp_path: Path, gpu: Any) -> None:
    stand_in = _float16_model(tmp_path / "free.onnx", free_channels=True)
    with pytest.raises(ZsadError, match=r"free.onnx: output cls .*only free dimension"):
        OnnxBackend(stand_in, "free.onnx", providers=[CPU], outputs_on="device")


def test_bad_or_unsupported_outputs_on_is_one_line(bundle: Path) -> None:
    from zsad.api.encoders import EncoderSpec, open_encoder
    from zsad.runtime.open import open_backend

    with pytest.raises(ZsadError, match=r"^outputs_on='gpu': choose host or device$"):
        open_backend(bundle, device="cpu", outputs_on="gpu")
    with pytest.raises(ZsadError, match=r"^outputs_on='GPU': choose host or device$"):
        OnnxBackend(Bundle.load(bundle), FP32_ONNX, providers=[CPU], outputs_on="GPU")
    # Refused before any server is contacted or any model is loaded.
    triton = EncoderSpec(triton="grpc://127.0.0.1:1", triton_model="m")
    torch = EncoderSpec(model="zsad-tiny")
    for spec in (triton, torch):
        with pytest.raises(ZsadError, match="outputs_on='device' needs a bundle or engine") as e:
            open_encoder(spec, ("cls", "taps"), outputs_on="device")
        assert "\n" not in str(e.value)


def test_missing_cupy_is_reported_when_the_backend_opens(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(ZsadError, match="outputs on the GPU need CuPy"):
        OnnxBackend(Bundle.load(bundle), FP32_ONNX, providers=[CPU], outputs_on="device")


class DeviceArray(np.ndarray):
    """A NumPy array that claims to live on a GPU and has no way back to the host (no
    ``.get``), so any host round trip through zsad.arrays.to_numpy fails."""

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return self.__array_interface__


class DeviceBackend:
    """Returns its outputs as DeviceArrays: 'cls' is each image's mean pixel."""

    image_size = 28
    outputs = ("cls",)
    name = "device"
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def run(self, pixels: np.ndarray) -> dict[str, Any]:
        return {"cls": pixels.mean(axis=(1, 2, 3))[:, None].view(DeviceArray)}


def test_encode_images_allocates_the_set_where_the_outputs_live(gpu: Any) -> None:
    from zsad.runtime.encode import encode_images

    images = [np.full((20, 30, 3), 40 * i, np.uint8) for i in range(5)]
    gpu.made.clear()
    encoded = encode_images(DeviceBackend(), images, batch_size=2, progress=False)
    cls = encoded.outputs["cls"]
    # One allocation by the device module for the whole set, filled batch by batch.
    assert len(gpu.made) == 1 and gpu.made[0].shape == (5, 1)
    assert cls.base is gpu.made[0] or cls is gpu.made[0]
    assert np.all(np.diff(np.asarray(cls)[:, 0]) > 0)


def _images(root: Path) -> list[Path]:
    from zsad.data.synthetic import make_dataset

    make_dataset(root, seed=2, categories=["wood"], size=64)
    return sorted((root / "wood" / "test").rglob("*.png"))[:6]


def test_set_scoring_on_the_gpu_asks_for_device_outputs_and_scores_the_same(
    bundle: Path, gpu: Any, tmp_path: Path
) -> None:
    import zsad
    from zsad.api.scorers import MethodOptions
    from zsad.runtime.open import open_backend
    from zsad.scoring.pipeline import SetScoringConfig

    images = _images(tmp_path)
    scoring = SetScoringConfig(device="gpu")
    with zsad.Detector.from_bundle(bundle, device="cpu", scoring=scoring) as det:
        assert det.backend.outputs_on == "device"
        on_device = det.score_set(images)
        streamed = det.stream(bank=2)
        scored = [r for path in images[:4] for r in streamed.add(path)]
    options = MethodOptions(scoring)
    with zsad.Detector("musc", open_backend(bundle, device="cpu"), options=options) as det:
        assert det.backend.outputs_on == "host"
        on_host = det.score_set(images)
    np.testing.assert_allclose(on_device.scores, on_host.scores, atol=1e-6)
    for a, b in zip(on_device.results, on_host.results, strict=True):
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-6)
    assert [r.index for r in scored] == [0, 1, 2, 3]
    # Scoring on the CPU, or a HeadCLIP-style per-image consumer, keeps host outputs.
    cpu = SetScoringConfig(device="cpu")
    with zsad.Detector.from_bundle(bundle, device="cpu", scoring=cpu) as det:
        assert det.backend.outputs_on == "host"


def test_set_outputs_on_only_for_local_set_scoring_on_cupy(gpu: Any, bundle: Path) -> None:
    from zsad.api.encoders import EncoderSpec, set_outputs_on

    local = EncoderSpec(bundle=bundle)
    assert set_outputs_on(local, "staps", "gpu") == "device"
    assert set_outputs_on(local, "musc", "auto") == "device"
    assert set_outputs_on(local, "staps", "cpu") == "host"
    assert set_outputs_on(local, "headclip", "gpu") == "host"
    served = EncoderSpec(bundle=bundle, triton="grpc://127.0.0.1:1", triton_model="m")
    assert set_outputs_on(served, "staps", "gpu") == "host"
    assert set_outputs_on(EncoderSpec(model="zsad-tiny"), "staps", "gpu") == "host"


def test_bench_pipeline_keeps_the_taps_on_the_device(
    bundle: Path, gpu: Any, tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from zsad.cli.app import app

    args = ["bench", "pipeline", "--backend", "onnxruntime", "--device", "cpu", "--n", "3"]
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, [*args, "--bundle", str(bundle), "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bench.json").read_text())
    assert data["config"]["scoring_device"] == "gpu"
    assert data["config"]["outputs_on"] == {"onnxruntime-fp32-cpu": "device"}  # by runner
    assert data["rows"][0]["images"] == 3


@pytest.mark.gpu
def test_device_outputs_are_cupy_arrays_on_the_gpu(bundle: Path, cupy_device: Any) -> None:
    import onnxruntime

    from zsad.runtime.encode import encode_images
    from zsad.scoring.pipeline import SetScoringConfig, score_set

    if CUDA not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    loaded = Bundle.load(bundle)
    host = OnnxBackend(loaded, FP16_ONNX, providers=[CUDA, CPU])
    device = OnnxBackend(loaded, FP16_ONNX, providers=[CUDA, CPU], outputs_on="device")
    expected = host.run(_pixels())
    outputs = device.run(_pixels())
    for name, value in outputs.items():
        assert isinstance(value, cupy_device.ndarray) and value.dtype == np.float32
        np.testing.assert_allclose(cupy_device.asnumpy(value), expected[name], atol=1e-4)
    images = [np.full((40, 40, 3), 30 * i, np.uint8) for i in range(3)]
    encoded = encode_images(device, images, batch_size=2, progress=False)
    assert all(isinstance(v, cupy_device.ndarray) for v in encoded.outputs.values())
    on_host = encode_images(host, images, batch_size=2, progress=False).outputs
    config = SetScoringConfig(device="gpu")
    kept = score_set(encoded.outputs["taps"], encoded.outputs["cls"], config, image_size=SIZE)
    copied = score_set(on_host["taps"], on_host["cls"], config, image_size=SIZE)
    np.testing.assert_allclose(kept.image_scores, copied.image_scores, atol=1e-4)
    host.close()
    device.close()
