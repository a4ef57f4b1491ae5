"""The TensorRT backend on stand-ins for TensorRT and the CUDA driver (tests/stand_ins.py): numbers,
chunking, buffers, dtypes, outputs left on the device, every error as one line, and a close that
gives everything back exactly once."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

from stand_ins import (
    IMAGE_SIZE,
    CUresult,
    FakeDriver,
    engine_reference,
    install_gpu,
    write_engine_bundle,
)
from zsad.errors import ZsadError
from zsad.formats.bundle import ENGINE_FILE, Bundle
from zsad.runtime.tensorrt_backend import TensorRTBackend

PIXEL_BYTES = 3 * IMAGE_SIZE * IMAGE_SIZE * 4  # one float32 image


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    return install_gpu(monkeypatch)


@pytest.fixture
def gpu_arrays(
    fakes: SimpleNamespace, numpy_as_gpu: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> SimpleNamespace:
    """The NumPy stand-in for CuPy as ``cupy``; its allocations count as device memory for the
    fake engine, and its allocations and concatenations are recorded."""
    made: list[np.ndarray] = []
    joined: list[int] = []

    def empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        made.append(fakes.driver.adopt(np.empty(shape, dtype)))
        return made[-1]

    def concatenate(arrays: list[np.ndarray]) -> np.ndarray:
        joined.append(len(arrays))
        return np.concatenate(arrays)

    numpy_as_gpu.empty, numpy_as_gpu.concatenate = empty, concatenate
    monkeypatch.setitem(sys.modules, "cupy", numpy_as_gpu)
    return SimpleNamespace(made=made, joined=joined)


def _open(root: Path, **options: str) -> TensorRTBackend:
    return TensorRTBackend(Bundle.load(root), ENGINE_FILE, device="cuda", **options)


def _pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)


def _error(excinfo: pytest.ExceptionInfo[ZsadError], *needles: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


def _nothing_held(driver: FakeDriver) -> None:
    assert driver.retained == 0 and not driver.live and not driver.streams


@pytest.mark.parametrize("flavour", ["rtx", "trt"])
def test_run_equals_numpy_in_chunks_of_the_max_batch(
    fakes: SimpleNamespace, tmp_path: Path, flavour: str
) -> None:
    version = {"rtx": "1.7.1", "trt": "10.3.0"}[flavour]
    write_engine_bundle(tmp_path, flavour=flavour, version=version, max_batch=3)
    pixels = _pixels(7)
    with _open(tmp_path) as backend:
        outputs = backend.run(pixels)
    expected = engine_reference(pixels)
    assert outputs.keys() == {"cls", "taps"}
    for name, value in outputs.items():
        assert value.dtype == np.float32 and value.shape == expected[name].shape
        np.testing.assert_array_equal(value, expected[name])
    module = {"rtx": fakes.rtx, "trt": fakes.trt}[flavour]
    assert [e.executions for e in module.engines] == [[3, 3, 1]]
    uploads = [n for direction, n in fakes.driver.copies if direction == "HtoD"]
    assert uploads == [3 * PIXEL_BYTES, 3 * PIXEL_BYTES, PIXEL_BYTES]
    assert sum(direction == "DtoH" for direction, _ in fakes.driver.copies) == 3 * 2
    assert fakes.driver.count("cuStreamSynchronize") == 3
    assert backend.name == f"{flavour}-engine-Stand-in RTX 3090"


def test_buffers_grow_for_a_bigger_chunk_and_are_reused_for_a_smaller_one(
    fakes: SimpleNamespace, tmp_path: Path
) -> None:
    write_engine_bundle(tmp_path, max_batch=3)
    driver = fakes.driver
    backend = _open(tmp_path)
    backend.run(_pixels(1))
    first = [address for address, _ in driver.allocations]
    assert len(first) == 3 and not driver.frees  # pixels, cls, taps
    np.testing.assert_array_equal(
        backend.run(_pixels(3, 1))["cls"], engine_reference(_pixels(3, 1))["cls"]
    )
    assert len(driver.allocations) == 6 and sorted(driver.frees) == sorted(first)
    assert [n for _, n in driver.allocations[3:]] == [3 * n for _, n in driver.allocations[:3]]
    for n in (2, 1, 3):
        assert backend.run(_pixels(n, n))["taps"].shape == (n, 2, 4, 3)
    assert len(driver.allocations) == 6 and len(driver.frees) == 3
    backend.close()
    assert sorted(driver.frees) == sorted(address for address, _ in driver.allocations)
    _nothing_held(driver)


def test_fp16_engines_take_fp16_input_and_give_float32(
    fakes: SimpleNamespace, tmp_path: Path
) -> None:
    write_engine_bundle(tmp_path, max_batch=4, input_dtype="float16", output_dtype="float16")
    pixels = _pixels(5)
    with _open(tmp_path) as backend:
        outputs = backend.run(pixels)
    expected = engine_reference(pixels.astype(np.float16), np.float16)
    for name, value in outputs.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, expected[name].astype(np.float32))
    uploads = [n for direction, n in fakes.driver.copies if direction == "HtoD"]
    assert uploads == [4 * PIXEL_BYTES // 2, PIXEL_BYTES // 2]
    downloads = [n for direction, n in fakes.driver.copies if direction == "DtoH"]
    assert downloads == [4 * 3 * 2, 4 * 24 * 2, 3 * 2, 24 * 2]  # cls, taps per chunk, in fp16


def test_close_gives_everything_back_once_and_run_afterwards_is_an_error(
    fakes: SimpleNamespace, tmp_path: Path
) -> None:
    write_engine_bundle(tmp_path, max_batch=2)
    driver = fakes.driver
    backend = _open(tmp_path)
    backend.run(_pixels(3))
    assert driver.retained == 1 and len(driver.streams) == 1
    stream = next(iter(driver.streams))
    # A station closes on another thread than the one that ran it: no context is current there.
    closer = threading.Thread(target=backend.close)
    closer.start()
    closer.join()
    assert sorted(driver.frees) == sorted(address for address, _ in driver.allocations)
    assert driver.destroyed_streams == [stream]
    _nothing_held(driver)
    calls = len(driver.calls)
    backend.close()
    assert len(driver.calls) == calls  # idempotent
    with pytest.raises(ZsadError) as excinfo:
        backend.run(_pixels(1))
    _error(excinfo, "rtx-engine-Stand-in RTX 3090: the backend was closed")


def test_a_failed_allocation_while_growing_is_not_freed_twice(
    fakes: SimpleNamespace, tmp_path: Path
) -> None:
    write_engine_bundle(tmp_path, max_batch=3)
    driver = fakes.driver
    backend = _open(tmp_path)
    backend.run(_pixels(1))
    driver.fail["cuMemAlloc"] = CUresult.CUDA_ERROR_OUT_OF_MEMORY
    with pytest.raises(ZsadError) as excinfo:
        backend.run(_pixels(3))
    _error(excinfo, f"CUDA allocation of {3 * PIXEL_BYTES} bytes failed: out of memory")
    del driver.fail["cuMemAlloc"]
    backend.close()
    assert len(driver.frees) == len(set(driver.frees)) == len(driver.allocations)
    _nothing_held(driver)


def test_runtime_failures_are_one_line_errors(fakes: SimpleNamespace, tmp_path: Path) -> None:
    write_engine_bundle(tmp_path, max_batch=4, profile=(1, 2))
    driver = fakes.driver
    backend = _open(tmp_path)
    with pytest.raises(ZsadError) as excinfo:
        backend.run(_pixels(4))
    _error(excinfo, "batch of 4: outside the engine's profile (1..4)")
    fakes.rtx.engines[0].fail_enqueue = True
    with pytest.raises(ZsadError) as excinfo:
        backend.run(_pixels(2))
    _error(excinfo, "TensorRT could not enqueue the engine")
    fakes.rtx.engines[0].fail_enqueue = False
    driver.fail["cuMemcpyHtoDAsync"] = CUresult.CUDA_ERROR_ILLEGAL_ADDRESS
    with pytest.raises(ZsadError) as excinfo:
        backend.run(_pixels(2))
    _error(
        excinfo,
        "CUDA copy to GPU failed: an illegal memory access was encountered "
        "(CUDA_ERROR_ILLEGAL_ADDRESS)",
    )
    del driver.fail["cuMemcpyHtoDAsync"]
    driver.fail["cuStreamSynchronize"] = CUresult.CUDA_ERROR_INVALID_HANDLE
    with pytest.raises(ZsadError) as excinfo:
        backend.run(_pixels(2))
    _error(excinfo, "CUDA synchronise failed: invalid resource handle")
    del driver.fail["cuStreamSynchronize"]
    for pixels, needle in (
        (_pixels(0), "an empty batch"),
        (np.zeros((1, 3, 16, 16), np.float32), f"takes (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE})"),
    ):
        with pytest.raises(ZsadError) as excinfo:
            backend.run(pixels)
        _error(excinfo, needle)
    np.testing.assert_array_equal(
        backend.run(_pixels(2))["cls"], engine_reference(_pixels(2))["cls"]
    )
    backend.close()
    _nothing_held(driver)


@pytest.mark.parametrize(
    ("setup", "needles"),
    [
        (
            {"version": "1.6.0"},
            ["built with TensorRT-RTX 1.6.0, this machine has 1.7.1", "rebuild"],
        ),
        (
            {"capability": (9, 0)},
            ["built for compute capability 8.6; this GPU (Stand-in RTX 3090) is 9.0"],
        ),
        ({"fail": "cuInit"}, ["CUDA initialisation failed: no CUDA-capable device is detected"]),
        ({"fail": "cuDevicePrimaryCtxRetain"}, ["CUDA context failed"]),
        ({"blob": b"not an engine"}, ["could not deserialise the engine on Stand-in RTX 3090"]),
        ({"outputs": ("cls",)}, ["the engine takes ['pixels'] and gives ['cls']"]),
        ({"outputs": ("cls", "taps", "local")}, ["gives ['cls', 'local', 'taps']"]),
        (
            {"engine_size": IMAGE_SIZE + 14},
            [f"takes images of (3, {IMAGE_SIZE + 14}, {IMAGE_SIZE + 14}); bundle.json says"],
        ),
        ({"fail": "cuStreamCreate"}, ["CUDA stream creation failed: no CUDA-capable device"]),
        ({"device": "cuda:1"}, ["CUDA device 1 failed: invalid argument"]),
        ({"device": "cpu"}, ["--device cpu: a TensorRT engine needs a GPU"]),
        ({"outputs_on": "gpu"}, ["outputs_on='gpu': choose host or device"]),
    ],
)
def test_opening_failures_are_one_line_errors_that_hold_nothing(
    fakes: SimpleNamespace, tmp_path: Path, setup: dict, needles: list[str]
) -> None:
    driver = fakes.driver
    write_engine_bundle(
        tmp_path,
        version=setup.get("version", "1.7.1"),
        outputs=setup.get("outputs", ("cls", "taps")),
        blob=setup.get("blob"),
        engine_size=setup.get("engine_size", IMAGE_SIZE),
    )
    driver.capability = setup.get("capability", driver.capability)
    if "fail" in setup:
        driver.fail[setup["fail"]] = CUresult.CUDA_ERROR_NO_DEVICE
    with pytest.raises(ZsadError) as excinfo:
        TensorRTBackend(
            Bundle.load(tmp_path),
            ENGINE_FILE,
            device=setup.get("device", "cuda"),
            outputs_on=setup.get("outputs_on", "host"),
        )
    _error(excinfo, *needles)
    _nothing_held(driver)


@pytest.mark.parametrize(
    ("missing", "needles"),
    [
        (("tensorrt_rtx",), ["TensorRT-RTX is not installed", "pip install 'zsad[rtx]'"]),
        (("cuda", "cuda.bindings", "cuda.bindings.driver"), ["cuda-python is not installed"]),
        (("cupy",), ["outputs on the GPU need CuPy"]),
    ],
)
def test_a_missing_module_is_named(
    fakes: SimpleNamespace,
    gpu_arrays: SimpleNamespace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    missing: tuple[str, ...],
    needles: list[str],
) -> None:
    write_engine_bundle(tmp_path)
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    with pytest.raises(ZsadError) as excinfo:
        _open(tmp_path, outputs_on="device")
    _error(excinfo, *needles)
    _nothing_held(fakes.driver)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_device_outputs_equal_host_outputs_without_a_copy_back(
    fakes: SimpleNamespace, gpu_arrays: SimpleNamespace, tmp_path: Path, dtype: str
) -> None:
    write_engine_bundle(tmp_path, max_batch=3, output_dtype=dtype)
    pixels = _pixels(7, 5)
    with _open(tmp_path) as backend:
        host = backend.run(pixels)
    driver = fakes.driver
    copies, allocations = len(driver.copies), len(driver.allocations)
    with _open(tmp_path, outputs_on="device") as backend:
        assert backend.outputs_on == "device"
        device = backend.run(pixels)
        assert gpu_arrays.joined == [3, 3]  # chunks joined by the outputs' array module
        single = backend.run(pixels[:2])
    assert not any(direction == "DtoH" for direction, _ in driver.copies[copies:])
    assert len(driver.allocations) - allocations == 1  # only the input lives in driver memory
    assert [a.dtype for a in gpu_arrays.made] == [np.dtype(dtype)] * (2 * 3 + 2)
    for name in ("cls", "taps"):
        assert device[name].dtype == single[name].dtype == np.float32
        np.testing.assert_array_equal(device[name], host[name])
        np.testing.assert_array_equal(single[name], host[name][:2])
    _nothing_held(driver)
