"""Array-module choice so the scoring kernels run unchanged on NumPy or, when present, CuPy."""

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
