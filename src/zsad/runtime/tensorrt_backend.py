"""The TensorRT backend for both flavours (TensorRT-RTX and full TensorRT), buffers via cuda-python.

The two Python modules, ``tensorrt_rtx`` and ``tensorrt``, share the TensorRT 10 API, so one class
runs either; bundle.json says which one built the engine. Device memory, copies and the stream
go through the CUDA driver API of ``cuda-python`` (no torch, no pycuda).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from zsad.arrays import check_outputs_on, device_arrays, device_pointer
from zsad.errors import ZsadError
from zsad.runtime.backend import Lifecycle, checked_pixels

if TYPE_CHECKING:
    from zsad.formats.bundle import Bundle


@dataclass(frozen=True)
class Flavour:
    """One TensorRT distribution: its module, the package that provides it and the zsad extra."""

    key: str
    module: str
    package: str
    extra: str
    label: str


FLAVOURS = {
    "rtx": Flavour("rtx", "tensorrt_rtx", "tensorrt-rtx-cu12", "rtx", "TensorRT-RTX"),
    "trt": Flavour("trt", "tensorrt", "tensorrt", "trt", "TensorRT"),
}


def import_tensorrt(flavour: str) -> Any:
    """Import the flavour's module, or explain which package to install."""
    if flavour not in FLAVOURS:
        raise ZsadError(f"TensorRT flavour {flavour!r}: choose {', '.join(FLAVOURS)}")
    spec = FLAVOURS[flavour]
    try:
        return __import__(spec.module)
    except (ImportError, OSError) as exc:
        raise ZsadError(
            f"{spec.label} is not installed ({spec.module}: {exc}): pip install "
            f"'zsad[{spec.extra}]' (package {spec.package})"
        ) from exc


def _driver() -> Any:
    try:
        from cuda.bindings import driver
    except ImportError as exc:
        raise ZsadError(
            "cuda-python is not installed (TensorRT buffers need it): pip install 'zsad[rtx]' "
            "or 'zsad[trt]'"
        ) from exc
    return driver


def _check(result: tuple[Any, ...], what: str) -> Any:
    """Unpack a cuda-python call's (error, value...) tuple, raising a ZsadError on failure."""
    cu = _driver()
    err, *values = result
    if err != cu.CUresult.CUDA_SUCCESS:
        _, text = cu.cuGetErrorString(err)
        code = getattr(err, "name", str(err))
        detail = f"{text.decode()} ({code})" if isinstance(text, bytes) else code
        raise ZsadError(f"CUDA {what} failed: {detail}")
    return values[0] if len(values) == 1 else tuple(values)


def _device_index(device: str) -> int:
    if device in ("auto", "cuda"):
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise ZsadError(f"--device {device!r}: a TensorRT engine runs on cuda or cuda:N")


def gpu_compute_capability(index: int = 0) -> tuple[str, str]:
    """(compute capability like '8.6', GPU name) of CUDA device ``index``, via the driver API."""
    cu = _driver()
    try:
        _check(cu.cuInit(0), "initialisation")
    except ZsadError:
        raise
    except Exception as exc:  # cuda-python raises its own types when libcuda is missing
        raise ZsadError(f"no NVIDIA driver found ({exc}); a TensorRT engine needs a GPU") from exc
    device = _check(cu.cuDeviceGet(index), f"device {index}")
    attr = cu.CUdevice_attribute
    major = _check(
        cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device), "query"
    )
    minor = _check(
        cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device), "query"
    )
    name = _check(cu.cuDeviceGetName(128, device), "query")
    name = name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)
    return f"{major}.{minor}", name


def gpu_details(index: int = 0) -> dict[str, Any]:
    """Name, compute capability, memory (MiB) and driver version of CUDA device ``index``."""
    capability, name = gpu_compute_capability(index)
    cu = _driver()
    device = _check(cu.cuDeviceGet(index), f"device {index}")
    memory = _check(cu.cuDeviceTotalMem(device), "query")
    version = int(_check(cu.cuDriverGetVersion(), "query"))  # e.g. 12040 for CUDA 12.4
    return {
        "name": name,
        "compute_capability": capability,
        "memory_mib": int(memory) // 2**20,
        "driver": f"CUDA {version // 1000}.{version % 1000 // 10}",
    }


class TensorRTBackend(Lifecycle):
    """Runs a bundle's serialized engine; implements zsad.runtime.backend.EncoderBackend.

    ``outputs_on="device"`` leaves the outputs on the GPU as CuPy float32 arrays the engine writes
    into directly (no device -> host copy), for scoring on the same GPU.
    """

    def __init__(
        self, bundle: Bundle, filename: str, *, device: str = "auto", outputs_on: str = "host"
    ) -> None:
        # close() undoes only what was set up, so a failure half-way through gives all of it back.
        self._cu: Any = None
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._stream: Any = None
        self._execution = self._engine = self._runtime = None
        info = bundle.engine
        if info is None or info.file != filename:
            raise ZsadError(f"{bundle.root / filename}: not the engine listed in bundle.json")
        if device == "cpu":
            raise ZsadError(
                "--device cpu: a TensorRT engine needs a GPU; use --bundle for ONNX Runtime"
            )
        self.outputs_on = check_outputs_on(outputs_on)
        self._xp = device_arrays() if outputs_on == "device" else np
        trt = import_tensorrt(info.flavour)
        label = FLAVOURS[info.flavour].label
        if trt.__version__ != info.tensorrt_version:
            raise ZsadError(
                f"{bundle.root / filename}: built with {label} {info.tensorrt_version}, this "
                f"machine has {trt.__version__}; engines only load on the version that built them "
                "(rebuild with zsad export, or install the matching version)"
            )
        index = _device_index(device)
        capability, gpu = gpu_compute_capability(index)
        if capability not in info.compute_capabilities:
            raise ZsadError(
                f"{bundle.root / filename}: built for compute capability "
                f"{', '.join(info.compute_capabilities)}; this GPU ({gpu}) is {capability} "
                "(rebuild with zsad export --compute-capability "
                f"{capability})"
            )
        blob = bundle.file(filename).read_bytes()
        cu = _driver()
        handle = _check(cu.cuDeviceGet(index), "device")
        self._context = _check(cu.cuDevicePrimaryCtxRetain(handle), "context")
        self._cu, self._device = cu, handle
        self.bundle = bundle
        self.image_size = bundle.image_size
        self.mean = bundle.mean
        self.std = bundle.std
        self.outputs = bundle.outputs
        self.min_batch, self.max_batch = info.min_batch, info.max_batch
        self.name = f"{info.flavour}-engine-{gpu}"
        try:
            self._load(trt, blob, f"{bundle.root / filename}", f"{label} {trt.__version__}", gpu)
        except BaseException:
            self.close()
            raise

    def _load(self, trt: Any, blob: bytes, path: str, version: str, gpu: str) -> None:
        cu = self._cu
        _check(cu.cuCtxSetCurrent(self._context), "context")
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise ZsadError(
                f"{path}: {version} could not deserialise the engine on {gpu}; rebuild it for "
                "this GPU"
            )
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = sorted(set(names) - set(inputs))
        if len(inputs) != 1 or set(self.outputs) != set(outputs):
            raise ZsadError(
                f"{path}: the engine takes {inputs} and gives {outputs}; bundle.json expects one "
                f"input and {list(self.outputs)}"
            )
        self._input = inputs[0]
        # A bundle.json that lies about its image size fails here, in one line, not at a frame.
        taken = tuple(int(d) for d in engine.get_tensor_shape(self._input))[1:]
        if taken != (3, self.image_size, self.image_size):
            raise ZsadError(
                f"{path}: the engine takes images of {taken}; bundle.json says "
                f"(3, {self.image_size}, {self.image_size}) (export the bundle again)"
            )
        self._dtypes = {
            name: np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            for name in (self._input, *self.outputs)
        }
        self._execution = engine.create_execution_context()
        if self._execution is None:
            raise ZsadError(f"{path}: {version} could not create an execution context on {gpu}")
        # A blocking stream: work on it waits for CuPy's (legacy default stream) work and the
        # other way round, so device outputs are never written under a pending CuPy kernel.
        self._stream = _check(cu.cuStreamCreate(0), "stream creation")

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size >= nbytes:
            return ptr
        if ptr:
            del self._buffers[name]  # forgotten before the free: never freed twice
            _check(self._cu.cuMemFree(ptr), "free")
        ptr = int(_check(self._cu.cuMemAlloc(nbytes), f"allocation of {nbytes} bytes"))
        self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, pixels: np.ndarray) -> dict[str, Any]:
        """Encode a float32 batch (B, 3, S, S), in chunks of the engine's largest batch; NumPy
        outputs, or CuPy arrays on the GPU with ``outputs_on="device"``."""
        if self._cu is None:
            raise ZsadError(f"{self.name}: the backend was closed")
        pixels = checked_pixels(pixels, self.image_size, "this engine")
        if len(pixels) == 0:
            raise ZsadError("an empty batch: a TensorRT engine encodes at least one image")
        parts = [
            self._run_chunk(pixels[i : i + self.max_batch])
            for i in range(0, len(pixels), self.max_batch)
        ]
        if len(parts) == 1:
            return parts[0]
        return {name: self._xp.concatenate([p[name] for p in parts]) for name in self.outputs}

    def _run_chunk(self, pixels: np.ndarray) -> dict[str, Any]:
        cu, ctx = self._cu, self._execution
        _check(cu.cuCtxSetCurrent(self._context), "context")
        host_in = np.ascontiguousarray(pixels, dtype=self._dtypes[self._input])
        if not ctx.set_input_shape(self._input, host_in.shape):
            raise ZsadError(
                f"batch of {len(host_in)}: outside the engine's profile "
                f"({self.min_batch}..{self.max_batch})"
            )
        d_in = self._buffer(self._input, host_in.nbytes)
        ctx.set_tensor_address(self._input, d_in)
        _check(
            cu.cuMemcpyHtoDAsync(d_in, host_in.ctypes.data, host_in.nbytes, self._stream),
            "copy to GPU",
        )
        on_device = self.outputs_on == "device"
        outs = {}
        for name in self.outputs:
            shape, dtype = tuple(ctx.get_tensor_shape(name)), self._dtypes[name]
            if on_device:
                out = self._xp.empty(shape, dtype=dtype)
                address = device_pointer(out)
            else:
                out = np.empty(shape, dtype=dtype)
                address = self._buffer(name, out.nbytes)
            ctx.set_tensor_address(name, address)
            outs[name] = out
        if not ctx.execute_async_v3(int(self._stream)):
            raise ZsadError(f"{self.name}: TensorRT could not enqueue the engine")
        if not on_device:
            for name, out in outs.items():
                _check(
                    cu.cuMemcpyDtoHAsync(
                        out.ctypes.data, self._buffers[name][0], out.nbytes, self._stream
                    ),
                    "copy from GPU",
                )
        _check(cu.cuStreamSynchronize(self._stream), "synchronise")
        return {name: out.astype(np.float32, copy=False) for name, out in outs.items()}

    def close(self) -> None:
        """Free the buffers, stream and engine, and release the CUDA primary context."""
        cu = self._cu
        if cu is None:
            return
        self._cu = None
        # The context is current per thread: close may run on another thread than run did.
        cu.cuCtxSetCurrent(self._context)
        # TensorRT objects free device memory in their destructors: drop them while the
        # context is still held, then let go of the context itself.
        self._execution = self._engine = self._runtime = None
        for ptr, _ in self._buffers.values():
            cu.cuMemFree(ptr)
        self._buffers.clear()
        if self._stream is not None:
            cu.cuStreamDestroy(self._stream)
            self._stream = None
        cu.cuDevicePrimaryCtxRelease(self._device)

    def __del__(self) -> None:
        # At interpreter shutdown cuda-python may already be torn down.
        with contextlib.suppress(Exception):
            self.close()
