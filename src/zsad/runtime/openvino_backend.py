"""The OpenVINO backend: a bundle's FP32 encoder on an Intel (or AMD) CPU or an Intel GPU.

OpenVINO reads the bundle's ``encoder.onnx`` itself. The compute precision is always set
explicitly: on CPUs with AMX or AVX-512 BF16, OpenVINO's default quietly computes in bf16, which
moves scores by about 1e-2; ``fp32`` (the hint f32) keeps them within about 1e-5 of ONNX
Runtime. ``bf16`` is that faster mode, asked for; ``int8`` compresses the weights to 8 bits
(NNCF) and computes in f32.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from zsad.arrays import check_outputs_on, device_arrays
from zsad.errors import ZsadError
from zsad.formats.bundle import FP32_ONNX
from zsad.runtime.backend import Lifecycle, checked_pixels

if TYPE_CHECKING:
    from zsad.formats.bundle import Bundle

PRECISIONS = ("fp32", "bf16", "int8")
# --device name -> OpenVINO device; auto is the CPU, which every OpenVINO build has.
DEVICES = {"auto": "CPU", "cpu": "CPU", "gpu": "GPU"}


def openvino_module() -> Any:
    """The ``openvino`` package, or a one-line error naming the extra to install."""
    try:
        import openvino
    except ImportError as exc:
        raise ZsadError(
            "--backend openvino: OpenVINO is not installed: pip install 'zsad[openvino]'"
        ) from exc
    return openvino


def openvino_device(device: str) -> str:
    """The OpenVINO device for --device auto|cpu|gpu; cuda (an NVIDIA GPU) is an error."""
    if device not in DEVICES:
        raise ZsadError(
            f"--device {device} with --backend openvino: choose auto, cpu or gpu (an Intel GPU); "
            "NVIDIA GPUs run on --backend onnxruntime or an engine"
        )
    return DEVICES[device]


class OpenVinoBackend(Lifecycle):
    """Runs a bundle's FP32 ONNX file on OpenVINO; implements
    zsad.runtime.backend.EncoderBackend."""

    def __init__(
        self,
        bundle: Bundle,
        filename: str = FP32_ONNX,
        *,
        device: str = "CPU",
        precision: str = "fp32",
        outputs_on: str = "host",
    ) -> None:
        self.outputs_on = check_outputs_on(outputs_on)
        if precision not in PRECISIONS:
            raise ZsadError(f"--precision {precision}: choose {', '.join(PRECISIONS)}")
        ov = openvino_module()
        path = bundle.file(filename)
        core = ov.Core()
        _check_device(core, device, precision)
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for bad files
            raise ZsadError(f"{path}: OpenVINO cannot read it ({exc})") from exc
        _check_model(model, bundle, path)
        if precision == "int8":
            model = _compress_weights(model)
        # int8 compresses only the weights: the arithmetic stays f32, as with precision fp32.
        hint = "bf16" if precision == "bf16" else "f32"
        try:
            self.compiled = core.compile_model(model, device, {"INFERENCE_PRECISION_HINT": hint})
        except Exception as exc:
            raise ZsadError(f"{path}: OpenVINO cannot compile it for {device} ({exc})") from exc
        self.request = self.compiled.create_infer_request()
        self.bundle = bundle
        self.image_size = bundle.image_size
        self.mean = bundle.mean
        self.std = bundle.std
        self.outputs = bundle.outputs
        self.name = f"openvino-{precision}-{device.lower()}"
        self._ports = {name: self.compiled.output(name) for name in self.outputs}
        if self.outputs_on == "device":
            self._cupy = device_arrays()  # missing CuPy fails here, not at the first image

    def run(self, pixels: np.ndarray) -> dict[str, Any]:
        """Encode a float32 batch (B, 3, S, S): float32 NumPy arrays, or CuPy on the device."""
        pixels = checked_pixels(pixels, self.image_size, "this bundle")
        if self.request is None:
            raise ZsadError(f"{self.name}: the backend was closed")
        self.request.infer({0: pixels})
        # The request reuses its output tensors on the next call: copy them out.
        values = {
            name: np.array(self.request.get_tensor(port).data, np.float32)
            for name, port in self._ports.items()
        }
        if self.outputs_on == "device":
            return {name: self._cupy.asarray(v) for name, v in values.items()}
        return values

    def close(self) -> None:
        """Drop the compiled model and its request (their memory goes with them)."""
        self.request = None
        self.compiled = None


def _check_device(core: Any, device: str, precision: str) -> None:
    """Refuse a device this machine's OpenVINO lacks, or bf16 where it cannot compute it."""
    available = core.available_devices
    if not any(d.split(".")[0] == device for d in available):
        raise ZsadError(
            f"OpenVINO sees no {device} here (devices: {', '.join(available) or 'none'}); "
            "an Intel GPU also needs its compute runtime (intel-opencl-icd)"
        )
    if precision == "bf16":
        capabilities = core.get_property(device, "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in capabilities:
            raise ZsadError(
                f"--precision bf16: OpenVINO's {device} has no bf16 arithmetic here "
                f"({', '.join(capabilities)}); use fp32 or int8"
            )


def _check_model(model: Any, bundle: Bundle, path: object) -> None:
    """Refuse a graph whose input size or outputs differ from bundle.json's."""
    shape = model.inputs[0].get_partial_shape()
    sides = [int(d.get_length()) for d in list(shape)[2:4] if d.is_static]
    if any(side != bundle.image_size for side in sides):
        raise ZsadError(
            f"{path}: the ONNX graph takes {shape} images but {bundle.root / 'bundle.json'} "
            f"says image_size {bundle.image_size}; export the bundle again (zsad export)"
        )
    names = {name for output in model.outputs for name in output.get_names()}
    missing = [name for name in bundle.outputs if name not in names]
    if missing:
        raise ZsadError(f"{path}: no output {', '.join(missing)} (bundle.json lists them)")


def _compress_weights(model: Any) -> Any:
    """The model with its weights compressed to int8 (per output channel, NNCF's default)."""
    try:
        import nncf
    except ImportError as exc:
        raise ZsadError(
            "--precision int8: weight compression needs NNCF: pip install 'zsad[openvino]'"
        ) from exc
    # NNCF prints its statistics and a progress bar on stdout, where `--json` output goes.
    nncf.set_log_level(logging.WARNING)
    with contextlib.redirect_stdout(sys.stderr):
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
