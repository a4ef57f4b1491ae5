"""NumPy or CuPy: the one home of the array helpers. Scoring kernels run unchanged on either
module; backends may leave their outputs as CuPy arrays on the GPU that ran the encoder, so GPU
scoring reads the taps without a device -> host -> device round trip.

Backends write into buffers they allocate with ``device_arrays`` and hand the raw address to ONNX
Runtime's IOBinding or to a TensorRT execution context; ``device_pointer`` reads that address
from either kind of array.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from zsad.errors import ZsadError

DEVICES = ("auto", "cpu", "gpu")


def _cupy_with_device() -> ModuleType | None:
    try:
        import cupy
    except ImportError:
        return None
    try:
        has_device = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # a missing or broken driver means "no GPU" for device="auto"
        return None
    return cupy if has_device else None


def array_module(device: str = "auto") -> ModuleType:
    """Return ``numpy`` or ``cupy`` for ``device`` in {"auto", "cpu", "gpu"}."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return np
    cupy = _cupy_with_device()
    if cupy is not None:
        return cupy
    if device == "gpu":
        raise ZsadError(
            "device='gpu' needs CuPy (e.g. pip install cupy-cuda12x) and a visible CUDA device; "
            "use device='cpu' or 'auto'"
        )
    return np


def module_of(array: Any) -> ModuleType:
    """The array module ``array`` lives in: ``cupy`` for a GPU array, else ``numpy``."""
    if hasattr(array, "__cuda_array_interface__"):
        import cupy

        return cupy
    return np


def to_numpy(array: Any) -> np.ndarray:
    """Return ``array`` as a NumPy array, copying it off the GPU when it is a CuPy array."""
    if hasattr(array, "__cuda_array_interface__"):
        return array.get()
    return np.asarray(array)


OUTPUTS_ON = ("host", "device")


def check_outputs_on(outputs_on: str) -> str:
    """``outputs_on`` if it is 'host' or 'device', else a one-line error."""
    if outputs_on not in OUTPUTS_ON:
        raise ZsadError(f"outputs_on={outputs_on!r}: choose {' or '.join(OUTPUTS_ON)}")
    return outputs_on


def device_arrays() -> ModuleType:
    """CuPy, for outputs kept on the GPU, or a one-line error naming the package to install."""
    try:
        import cupy
    except ImportError as exc:
        raise ZsadError(
            "outputs on the GPU need CuPy (pip install cupy-cuda12x or cupy-cuda13x)"
        ) from exc
    return cupy


def device_pointer(array: Any) -> int:
    """The address of ``array``'s first element: a device address for a CuPy array, else host."""
    interface = getattr(array, "__cuda_array_interface__", None)
    if interface is None:
        interface = np.asarray(array).__array_interface__
    return int(interface["data"][0])
