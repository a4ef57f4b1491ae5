"""The ONNX Runtime backend: a bundle's FP32 or FP16 encoder on the CPU or CUDA provider."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

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

    def __init__(self, bundle: Bundle, filename: str, *, providers: list[str]) -> None:
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
        names = tuple(o.name for o in self.session.get_outputs())
        if set(names) != set(self.outputs):
            raise ZsadError(f"{path}: outputs {names} differ from bundle.json's {self.outputs}")
        precision = "fp16" if filename.endswith(".fp16.onnx") else "fp32"
        self.name = f"onnxruntime-{precision}-{'cuda' if used[0] == CUDA else 'cpu'}"

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Encode a float32 batch (B, 3, S, S)."""
        pixels = checked_pixels(pixels, self.image_size, "this bundle")
        if self.session is None:
            raise ZsadError(f"{self.name}: the backend was closed")
        values = self.session.run(list(self.outputs), {self.input_name: pixels})
        return {
            name: np.asarray(v, np.float32) for name, v in zip(self.outputs, values, strict=True)
        }

    def close(self) -> None:
        """Drop the ONNX Runtime session (its CUDA memory goes with it)."""
        self.session = None
