"""The ONNX Runtime backend: a bundle's FP32 or FP16 encoder on the CPU or CUDA provider.

``outputs_on="device"`` hands the outputs over as CuPy arrays through IOBinding: on the CUDA
provider ONNX Runtime writes them straight into CuPy buffers on the GPU (no copy to the host); on
the CPU provider it writes host buffers, each uploaded once per batch, so the same path runs (and
is tested) without a GPU and scoring on CuPy still reads its taps where it computes.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np

from zsad.arrays import check_outputs_on, device_arrays, device_pointer
from zsad.errors import ZsadError
from zsad.runtime.backend import Lifecycle, checked_pixels

if TYPE_CHECKING:
    from zsad.formats.bundle import Bundle

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ZsadError(
            "ONNX Runtime is not installed: pip install onnxruntime (CPU) or 'zsad[gpu]' (CUDA)"
        ) from exc
    return onnxruntime


def resolve_providers(device: str) -> list[str]:
    """Execution providers for --device auto|cpu|cuda; cuda without onnxruntime-gpu is an error."""
    available = _onnxruntime().get_available_providers()
    if device == "cpu":
        return [CPU]
    if device in ("cuda", "auto"):
        if CUDA in available:
            return [CUDA, CPU]
        if device == "cuda":
            raise ZsadError(
                "--device cuda: this onnxruntime has no CUDA provider; install the gpu extra "
                "(pip uninstall onnxruntime && pip install 'zsad[gpu]')"
            )
        return [CPU]
    raise ZsadError(f"--device {device!r}: choose auto, cpu or cuda")


class OnnxBackend(Lifecycle):
    """Runs one ONNX file of a bundle; implements zsad.runtime.backend.EncoderBackend."""

    def __init__(
        self, bundle: Bundle, filename: str, *, providers: list[str], outputs_on: str = "host"
    ) -> None:
        self.outputs_on = check_outputs_on(outputs_on)
        ort = _onnxruntime()
        path = bundle.file(filename)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: provider fallbacks are reported below
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for bad or foreign files
            raise ZsadError(f"{path}: ONNX Runtime cannot load it ({exc})") from exc
        used = self.session.get_providers()
        if providers[0] == CUDA and used[0] != CUDA:
            raise ZsadError(
                f"{path}: the CUDA provider did not start (no GPU, driver or CUDA libraries); "
                "use --device cpu"
            )
        self.bundle = bundle
        self.image_size = bundle.image_size
        self.mean = bundle.mean
        self.std = bundle.std
        self.outputs = bundle.outputs
        self.input_name = self.session.get_inputs()[0].name
        _check_input_size(self.session.get_inputs()[0].shape, bundle, path)
        names = tuple(o.name for o in self.session.get_outputs())
        if set(names) != set(self.outputs):
            raise ZsadError(f"{path}: outputs {names} differ from bundle.json's {self.outputs}")
        precision = "fp16" if filename.endswith(".fp16.onnx") else "fp32"
        self.on_cuda = used[0] == CUDA
        self.name = f"onnxruntime-{precision}-{'cuda' if self.on_cuda else 'cpu'}"
        if self.outputs_on == "device":
            self._cupy = device_arrays()  # missing CuPy fails here, not at the first image
            self._bound = _bound_outputs(self.session, path)
            options = self.session.get_provider_options().get(CUDA, {})
            self._device_id = int(options.get("device_id", 0))

    def run(self, pixels: np.ndarray) -> dict[str, Any]:
        """Encode a float32 batch (B, 3, S, S): float32 NumPy arrays, or CuPy on the device."""
        pixels = checked_pixels(pixels, self.image_size, "this bundle")
        if self.session is None:
            raise ZsadError(f"{self.name}: the backend was closed")
        if self.outputs_on == "device":
            return self._run_bound(pixels)
        values = self.session.run(list(self.outputs), {self.input_name: pixels})
        return {
            name: np.asarray(v, np.float32) for name, v in zip(self.outputs, values, strict=True)
        }

    def _run_bound(self, pixels: np.ndarray) -> dict[str, Any]:
        """Run through IOBinding into preallocated buffers; CuPy float32 arrays come back."""
        cupy = self._cupy
        # CUDA provider: CuPy buffers on its GPU. CPU provider: host buffers (it can only write
        # host memory), uploaded below.
        xp = cupy if self.on_cuda else np
        place = cupy.cuda.Device(self._device_id) if self.on_cuda else nullcontext()
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, pixels)
        buffers = {}
        with place:
            for name in self.outputs:
                shape, dtype = (len(pixels), *self._bound[name][0]), self._bound[name][1]
                buffer = xp.empty(shape, dtype)
                binding.bind_output(
                    name,
                    "cuda" if self.on_cuda else "cpu",
                    self._device_id,
                    dtype,
                    list(shape),
                    device_pointer(buffer),
                )
                buffers[name] = buffer
            if self.on_cuda:
                # ONNX Runtime writes on its own stream: CuPy work still queued on this one
                # (say, the copy out of the block these buffers reuse) must finish first.
                cupy.cuda.get_current_stream().synchronize()
            self.session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            # FP16 outputs widen on the GPU; float32 ones (and CuPy buffers) pass through as is.
            return {
                name: cupy.asarray(buffer).astype(cupy.float32, copy=False)
                for name, buffer in buffers.items()
            }

    def close(self) -> None:
        """Drop the ONNX Runtime session (its CUDA memory goes with it)."""
        self.session = None


def _check_input_size(shape: list[Any], bundle: Bundle, path: object) -> None:
    """Refuse a graph whose fixed input size is not the one bundle.json states."""
    # Caught here, when the bundle opens: otherwise every image fails in ONNX Runtime with a
    # shape error, after the model loaded and the images were read.
    sides = [d for d in shape[2:4] if isinstance(d, int)]
    if sides and any(side != bundle.image_size for side in sides):
        size = "x".join(str(d) for d in shape[2:4])
        raise ZsadError(
            f"{path}: the ONNX graph takes {size} px images but {bundle.root / 'bundle.json'} "
            f"says image_size {bundle.image_size}; export the bundle again (zsad export)"
        )


_ELEMENT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _bound_outputs(session: Any, path: object) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Each output's shape after the batch dimension, and its dtype, from the file's metadata.

    zsad export fixes every dimension but the batch (the image size is part of the bundle), so
    the buffers can be sized before the first run; a file with other free dimensions is refused.
    """
    bound = {}
    for output in session.get_outputs():
        rest = tuple(output.shape[1:])
        if not all(isinstance(d, int) for d in rest) or output.type not in _ELEMENT_TYPES:
            raise ZsadError(
                f"{path}: output {output.name} is {output.type} {output.shape}; outputs on the "
                "device need float32/float16 outputs whose only free dimension is the batch"
            )
        bound[output.name] = (rest, _ELEMENT_TYPES[output.type])
    return bound
