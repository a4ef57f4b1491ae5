"""Where a backend leaves its outputs: host NumPy arrays, or CuPy arrays on the GPU that ran the
encoder, so GPU scoring reads the taps without a device -> host -> device round trip.

Backends write into buffers they allocate here and hand the raw address to ONNX Runtime's
IOBinding or to a TensorRT execution context; ``device_pointer`` reads that address from either
kind of array.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from zsad.errors import ZsadError

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
