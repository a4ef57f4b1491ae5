"""Stand-ins for TensorRT (``tensorrt_rtx``/``tensorrt``) and cuda-python's driver API, so the
TensorRT backend runs on any machine: "device memory" is host memory the fake driver owns, the
fake engine really reads its input from and writes its outputs to the addresses it is given, and
every allocation, copy, free, stream and context call is recorded. ``install`` puts both into
``sys.modules``."""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zsad.formats.bundle import ENGINE_FILE, FORMAT, sha256_file, write_meta

IMAGE_SIZE = 8
TAPS_SHAPE = (2, 4, 3)  # per image: two taps of four tokens, one value per channel


class CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_OUT_OF_MEMORY = 2
    CUDA_ERROR_NOT_INITIALIZED = 3
    CUDA_ERROR_NO_DEVICE = 100
    CUDA_ERROR_INVALID_CONTEXT = 201
    CUDA_ERROR_INVALID_HANDLE = 400
    CUDA_ERROR_ILLEGAL_ADDRESS = 700


# What libcuda's cuGetErrorString says for each code.
ERROR_STRINGS = {
    CUresult.CUDA_SUCCESS: b"no error",
    CUresult.CUDA_ERROR_INVALID_VALUE: b"invalid argument",
    CUresult.CUDA_ERROR_OUT_OF_MEMORY: b"out of memory",
    CUresult.CUDA_ERROR_NOT_INITIALIZED: b"initialization error",
    CUresult.CUDA_ERROR_NO_DEVICE: b"no CUDA-capable device is detected",
    CUresult.CUDA_ERROR_INVALID_CONTEXT: b"invalid device context",
    CUresult.CUDA_ERROR_INVALID_HANDLE: b"invalid resource handle",
    CUresult.CUDA_ERROR_ILLEGAL_ADDRESS: b"an illegal memory access was encountered",
}


class CUdevice_attribute(enum.IntEnum):  # noqa: N801 - cuda-python's name
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


class CUstream:
    """A stream handle; ``int()`` gives the handle TensorRT's execute_async_v3 takes."""

    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __int__(self) -> int:
        return self.handle


@dataclass
class FakeDriver:
    """``cuda.bindings.driver`` over host memory, recording every call; ``fail[name] = code``
    makes the call ``name`` return that CUDA error."""

    capability: tuple[int, int] = (8, 6)
    gpu: str = "Stand-in RTX 3090"
    devices: int = 1
    memory: int = 24 * 2**30
    driver_version: int = 12040
    calls: list[tuple[str, tuple]] = field(default_factory=list)
    allocations: list[tuple[int, int]] = field(default_factory=list)  # (address, bytes)
    frees: list[int] = field(default_factory=list)
    copies: list[tuple[str, int]] = field(default_factory=list)  # ("HtoD" | "DtoH", bytes)
    fail: dict[str, CUresult] = field(default_factory=dict)
    live: dict[int, Any] = field(default_factory=dict)  # address -> the host buffer behind it
    foreign: dict[int, np.ndarray] = field(default_factory=dict)  # the CuPy stand-in's arrays
    streams: set[int] = field(default_factory=set)
    destroyed_streams: list[int] = field(default_factory=list)
    retained: int = 0  # primary context references held
    initialised: bool = False
    CUresult = CUresult
    CUdevice_attribute = CUdevice_attribute

    def __post_init__(self) -> None:
        self._current = threading.local()  # a context is current per thread, as in CUDA
        self._next_stream = 1

    def _call(self, name: str, *args: Any) -> CUresult | None:
        self.calls.append((name, args))
        return self.fail.get(name)

    def count(self, name: str) -> int:
        """How often ``name`` was called."""
        return sum(1 for call, _ in self.calls if call == name)

    def _context_error(self) -> CUresult | None:
        if getattr(self._current, "context", None) != "primary" or self.retained < 1:
            return CUresult.CUDA_ERROR_INVALID_CONTEXT
        return None

    def region(self, address: int, nbytes: int) -> bool:
        """Whether [address, address + nbytes) lies inside live fake-device or adopted memory."""
        sizes = {a: len(buf) for a, buf in self.live.items()}
        sizes |= {a: array.nbytes for a, array in self.foreign.items()}
        return any(a <= address and address + nbytes <= a + n for a, n in sizes.items())

    def adopt(self, array: np.ndarray) -> np.ndarray:
        """Count ``array``'s memory as device memory (what the CuPy stand-in allocates); the
        driver keeps the array alive, so its address stays valid."""
        self.foreign[array.ctypes.data] = array
        return array

    def cuInit(self, flags: int) -> tuple:  # noqa: N802 - the driver API's names
        err = self._call("cuInit", flags)
        self.initialised = err is None
        return (err or CUresult.CUDA_SUCCESS,)

    def cuDeviceGetCount(self) -> tuple:  # noqa: N802
        err = self._call("cuDeviceGetCount")
        if err is None and not self.initialised:
            err = CUresult.CUDA_ERROR_NOT_INITIALIZED
        return (err, 0) if err else (CUresult.CUDA_SUCCESS, self.devices)

    def cuDeviceGet(self, ordinal: int) -> tuple:  # noqa: N802
        err = self._call("cuDeviceGet", ordinal)
        if err is None and not self.initialised:
            err = CUresult.CUDA_ERROR_NOT_INITIALIZED
        if err is None and ordinal >= self.devices:
            err = CUresult.CUDA_ERROR_INVALID_VALUE
        return (err, 0) if err else (CUresult.CUDA_SUCCESS, ordinal)

    def cuDeviceGetAttribute(self, attribute: CUdevice_attribute, device: int) -> tuple:  # noqa: N802
        err = self._call("cuDeviceGetAttribute", attribute, device)
        major = attribute == CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
        return (err, 0) if err else (CUresult.CUDA_SUCCESS, self.capability[0 if major else 1])

    def cuDeviceGetName(self, length: int, device: int) -> tuple:  # noqa: N802
        err = self._call("cuDeviceGetName", length, device)
        name = self.gpu.encode().ljust(length, b"\0")[:length]
        return (err, b"") if err else (CUresult.CUDA_SUCCESS, name)

    def cuDeviceTotalMem(self, device: int) -> tuple:  # noqa: N802
        err = self._call("cuDeviceTotalMem", device)
        return (err, 0) if err else (CUresult.CUDA_SUCCESS, self.memory)

    def cuDriverGetVersion(self) -> tuple:  # noqa: N802
        err = self._call("cuDriverGetVersion")
        return (err, 0) if err else (CUresult.CUDA_SUCCESS, self.driver_version)

    def cuDevicePrimaryCtxRetain(self, device: int) -> tuple:  # noqa: N802
        err = self._call("cuDevicePrimaryCtxRetain", device)
        if err:
            return (err, None)
        self.retained += 1
        return (CUresult.CUDA_SUCCESS, "primary")

    def cuDevicePrimaryCtxRelease(self, device: int) -> tuple:  # noqa: N802
        err = self._call("cuDevicePrimaryCtxRelease", device)
        if err is None and self.retained < 1:
            err = CUresult.CUDA_ERROR_INVALID_CONTEXT
        if err is None:
            self.retained -= 1
        return (err or CUresult.CUDA_SUCCESS,)

    def cuCtxSetCurrent(self, context: Any) -> tuple:  # noqa: N802
        err = self._call("cuCtxSetCurrent", context)
        if err is None:
            self._current.context = context
        return (err or CUresult.CUDA_SUCCESS,)

    def cuGetErrorString(self, error: CUresult) -> tuple:  # noqa: N802
        return (CUresult.CUDA_SUCCESS, ERROR_STRINGS[error])

    def cuMemAlloc(self, nbytes: int) -> tuple:  # noqa: N802
        err = self._call("cuMemAlloc", nbytes) or self._context_error()
        if err:
            return (err, 0)
        buffer = ctypes.create_string_buffer(nbytes)
        address = ctypes.addressof(buffer)
        self.live[address] = buffer
        self.allocations.append((address, nbytes))
        return (CUresult.CUDA_SUCCESS, address)

    def cuMemFree(self, address: int) -> tuple:  # noqa: N802
        err = self._call("cuMemFree", address) or self._context_error()
        if err is None and address not in self.live:
            err = CUresult.CUDA_ERROR_INVALID_VALUE  # never allocated, or freed already
        if err is None:
            del self.live[address]
        self.frees.append(address)  # attempts too: a double free shows up here
        return (err or CUresult.CUDA_SUCCESS,)

    def _copy(self, name: str, device: int, host: int, nbytes: int, stream: Any) -> tuple:
        err = self._call(name, device, host, nbytes, stream) or self._context_error()
        if err is None and int(stream) not in self.streams:
            err = CUresult.CUDA_ERROR_INVALID_HANDLE
        if err is None and not (device in self.live and self.region(device, nbytes)):
            err = CUresult.CUDA_ERROR_INVALID_VALUE
        if err:
            return (err,)
        to_device = name == "cuMemcpyHtoDAsync"
        ctypes.memmove(device if to_device else host, host if to_device else device, nbytes)
        self.copies.append(("HtoD" if to_device else "DtoH", nbytes))
        return (CUresult.CUDA_SUCCESS,)

    def cuMemcpyHtoDAsync(self, device: int, host: int, nbytes: int, stream: Any) -> tuple:  # noqa: N802
        return self._copy("cuMemcpyHtoDAsync", device, host, nbytes, stream)

    def cuMemcpyDtoHAsync(self, host: int, device: int, nbytes: int, stream: Any) -> tuple:  # noqa: N802
        return self._copy("cuMemcpyDtoHAsync", device, host, nbytes, stream)

    def cuStreamCreate(self, flags: int) -> tuple:  # noqa: N802
        err = self._call("cuStreamCreate", flags) or self._context_error()
        if err:
            return (err, None)
        stream = CUstream(self._next_stream)
        self._next_stream += 1
        self.streams.add(stream.handle)
        return (CUresult.CUDA_SUCCESS, stream)

    def cuStreamSynchronize(self, stream: CUstream) -> tuple:  # noqa: N802
        err = self._call("cuStreamSynchronize", stream)
        if err is None and int(stream) not in self.streams:
            err = CUresult.CUDA_ERROR_INVALID_HANDLE
        return (err or CUresult.CUDA_SUCCESS,)

    def cuStreamDestroy(self, stream: CUstream) -> tuple:  # noqa: N802
        err = self._call("cuStreamDestroy", stream)
        if err is None and int(stream) not in self.streams:
            err = CUresult.CUDA_ERROR_INVALID_HANDLE
        if err is None:
            self.streams.discard(int(stream))
            self.destroyed_streams.append(int(stream))
        return (err or CUresult.CUDA_SUCCESS,)


def engine_reference(pixels: np.ndarray, dtype: np.dtype | type = np.float32) -> dict:
    """What the fake engine computes from a (B, 3, S, S) batch, at the engine's output dtype:
    'cls' the per-channel mean, 'taps' two strided samples of the pixels, scaled."""
    x = pixels.astype(np.float32)
    batch = len(x)
    cls = x.mean(axis=(2, 3))
    first = x[:, :, :2, :2].reshape(batch, 3, 4).transpose(0, 2, 1)
    second = x[:, :, 2::3, 1::4][:, :, :2, :2].reshape(batch, 3, 4).transpose(0, 2, 1)
    taps = np.stack([first, 0.5 * second + 1.0], axis=1)
    return {"cls": cls.astype(dtype), "taps": taps.astype(dtype)}


OUTPUT_SHAPES = {"cls": (3,), "taps": TAPS_SHAPE}


def _view(address: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = (ctypes.c_char * nbytes).from_address(address)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


class FakeExecutionContext:
    """set_input_shape within the profile, tensor addresses, execute_async_v3 on those addresses."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shape: tuple[int, ...] | None = None
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        spec = self.engine.spec
        expected = (3, spec["image_size"], spec["image_size"])
        low, high = spec["profile"]
        ok = name == "pixels" and tuple(shape[1:]) == expected and low <= shape[0] <= high
        self.shape = tuple(shape) if ok else None
        return ok

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = int(address)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        batch = self.shape[0] if self.shape else -1
        return (batch, *OUTPUT_SHAPES[name]) if name in OUTPUT_SHAPES else (batch, *self.shape[1:])

    def execute_async_v3(self, stream: int) -> bool:
        engine, driver = self.engine, self.engine.driver
        engine.executions.append(self.shape[0] if self.shape else None)
        if engine.fail_enqueue or self.shape is None or stream not in driver.streams:
            return False
        dtypes = engine.dtypes
        shapes = {"pixels": self.shape} | {n: self.get_tensor_shape(n) for n in OUTPUT_SHAPES}
        for name, shape in shapes.items():
            nbytes = int(np.prod(shape)) * dtypes[name].itemsize
            if name not in self.addresses or not driver.region(self.addresses[name], nbytes):
                return False  # a real engine would fault on memory it does not own
        pixels = _view(self.addresses["pixels"], self.shape, dtypes["pixels"])
        for name, result in engine_reference(pixels, dtypes["cls"]).items():
            value = np.ascontiguousarray(result)
            ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
        return True


class FakeEngine:
    """An ICudaEngine from a JSON blob: input dtype, output dtype, image size, batch profile."""

    def __init__(self, spec: dict, driver: FakeDriver, trt: types.ModuleType) -> None:
        self.spec, self.driver, self.trt = spec, driver, trt
        self.dtypes = {
            "pixels": np.dtype(spec["input_dtype"]),
            "cls": np.dtype(spec["output_dtype"]),
            "taps": np.dtype(spec["output_dtype"]),
        }
        self.names = ["pixels", *spec["outputs"]]
        self.fail_enqueue = False
        self.executions: list[int | None] = []

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> Any:
        mode = self.trt.TensorIOMode
        return mode.INPUT if name == "pixels" else mode.OUTPUT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name == "pixels":  # a dynamic batch, as zsad's engines are built
            return (-1, 3, self.spec["image_size"], self.spec["image_size"])
        return (-1, *OUTPUT_SHAPES[name])

    def get_tensor_dtype(self, name: str) -> Any:
        return (
            self.trt.DataType.HALF if self.dtypes[name] == np.float16 else self.trt.DataType.FLOAT
        )

    def create_execution_context(self) -> FakeExecutionContext:
        return FakeExecutionContext(self)


def fake_tensorrt(name: str, version: str, driver: FakeDriver) -> types.ModuleType:
    """A ``tensorrt``/``tensorrt_rtx`` module; ``module.engines`` lists the engines it loaded."""
    trt = types.ModuleType(name)
    trt.__version__ = version
    trt.engines = []

    class Logger:
        ERROR = 2

        def __init__(self, severity: int) -> None:
            self.severity = severity

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, blob: bytes) -> FakeEngine | None:
            try:
                spec = json.loads(blob)
            except ValueError:
                return None  # what TensorRT returns for a blob it cannot read
            engine = FakeEngine(spec, driver, trt)
            trt.engines.append(engine)
            return engine

    trt.Logger, trt.Runtime = Logger, Runtime
    trt.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    trt.DataType = enum.Enum("DataType", "FLOAT HALF")
    trt.nptype = lambda dt: {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16}[dt]
    return trt


def install(monkeypatch: pytest.MonkeyPatch, driver: FakeDriver, *trts: types.ModuleType) -> None:
    """Make ``from cuda.bindings import driver`` and ``import tensorrt_rtx`` find the stand-ins."""
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.driver = bindings, driver
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", driver)
    for trt in trts:
        monkeypatch.setitem(sys.modules, trt.__name__, trt)


def install_gpu(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """A compute 8.6 GPU with TensorRT-RTX 1.7.1 and TensorRT 10.3.0 installed."""
    driver = FakeDriver()
    rtx = fake_tensorrt("tensorrt_rtx", "1.7.1", driver)
    trt = fake_tensorrt("tensorrt", "10.3.0", driver)
    install(monkeypatch, driver, rtx, trt)
    return types.SimpleNamespace(driver=driver, rtx=rtx, trt=trt)


def write_engine_bundle(
    root: Path,
    *,
    flavour: str = "rtx",
    version: str = "1.7.1",
    capabilities: tuple[str, ...] = ("8.6",),
    max_batch: int = 3,
    profile: tuple[int, int] | None = None,
    input_dtype: str = "float32",
    output_dtype: str = "float32",
    outputs: tuple[str, ...] = ("cls", "taps"),
    blob: bytes | None = None,
    engine_size: int = IMAGE_SIZE,
) -> Path:
    """A bundle whose bundle.json lists an engine; the engine blob is the fake engine's spec
    (``profile`` is what the engine really takes, ``max_batch`` what bundle.json says)."""
    root.mkdir(parents=True, exist_ok=True)
    spec = {
        "image_size": engine_size,
        "profile": list(profile or (1, max_batch)),
        "input_dtype": input_dtype,
        "output_dtype": output_dtype,
        "outputs": list(outputs),
    }
    engine = root / ENGINE_FILE
    engine.write_bytes(blob if blob is not None else json.dumps(spec).encode())
    meta = {
        "format": FORMAT,
        "method": "staps",
        "backbone": "stand-in",
        "image_size": IMAGE_SIZE,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "outputs": ["cls", "taps"],
        "engine": {
            "file": ENGINE_FILE,
            "flavour": flavour,
            "tensorrt_version": version,
            "compute_capabilities": list(capabilities),
            "batch": {"min": 1, "opt": max_batch, "max": max_batch},
        },
        "files": {ENGINE_FILE: {"sha256": sha256_file(engine), "bytes": engine.stat().st_size}},
    }
    write_meta(root, meta)
    return engine
