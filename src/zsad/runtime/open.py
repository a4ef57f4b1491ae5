"""Open the encoder backend a bundle directory, ONNX file or engine file calls for."""

from __future__ import annotations

import os
from pathlib import Path

from zsad.arrays import check_outputs_on
from zsad.errors import ZsadError
from zsad.formats.bundle import ENGINE_SUFFIXES, FP16_ONNX, FP32_ONNX, Bundle
from zsad.runtime.backend import EncoderBackend
from zsad.runtime.choose import check_engine_backend, choose_backend
from zsad.runtime.onnx_backend import OnnxBackend, resolve_providers
from zsad.runtime.openvino_backend import OpenVinoBackend, openvino_device
from zsad.runtime.tensorrt_backend import TensorRTBackend


def open_backend(
    path: str | os.PathLike[str],
    *,
    device: str = "auto",
    image_size: int | None = None,
    outputs_on: str = "host",
    backend: str = "auto",
    precision: str | None = None,
    bundle: Bundle | None = None,
) -> EncoderBackend:
    """Open an encoder backend from a bundle directory, an ONNX file or an engine inside one.

    ``.onnx`` runs on ONNX Runtime or OpenVINO; ``.engine``/``.plan`` on the TensorRT flavour
    bundle.json records. A bundle directory runs ONNX Runtime (the FP16 file on CUDA, the FP32
    file on CPU) or OpenVINO (the FP32 file, computed at ``precision``); ``backend="auto"`` picks
    as zsad.runtime.choose does. ``image_size``, when given, must equal the bundle's.
    ``outputs_on="device"`` returns the outputs as CuPy arrays on the GPU (zsad.arrays),
    for scoring that runs there. ``bundle``: the folder's bundle.json when the caller has
    already read it.
    """
    check_outputs_on(outputs_on)
    path = Path(path)
    if not path.exists():
        raise ZsadError(f"{path}: no such file or directory")
    if bundle is None:
        bundle = Bundle.load(path if path.is_dir() else path.parent)
    if image_size is not None and image_size != bundle.image_size:
        raise ZsadError(
            f"--image-size {image_size}: bundle {bundle.root} was exported for "
            f"{bundle.image_size} px (the size is fixed at export)"
        )
    if path.suffix in ENGINE_SUFFIXES:
        check_engine_backend(backend, precision)
        return TensorRTBackend(bundle, path.name, device=device, outputs_on=outputs_on)
    if path.is_dir() or path.suffix == ".onnx":
        backend = choose_backend(backend, device, precision)
    if backend == "openvino":
        name = FP32_ONNX if path.is_dir() else path.name
        return OpenVinoBackend(
            bundle,
            name,
            device=openvino_device(device),
            precision=precision or "fp32",
            outputs_on=outputs_on,
        )
    if path.is_dir():
        providers = resolve_providers(device)
        name = FP16_ONNX if providers[0] == "CUDAExecutionProvider" else FP32_ONNX
        return OnnxBackend(bundle, name, providers=providers, outputs_on=outputs_on)
    if path.suffix == ".onnx":
        providers = resolve_providers(device)
        return OnnxBackend(bundle, path.name, providers=providers, outputs_on=outputs_on)
    raise ZsadError(f"{path}: expected a bundle directory, an .onnx file or an .engine/.plan file")
