"""The encoder backends a bench times, by --backend name: torch FP32/FP16 or a bundle's runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zsad.errors import ZsadError
from zsad.formats.bundle import Bundle
from zsad.scoring.pipeline import METHODS as SET_METHODS

# zsad.model (torch) and zsad.runtime.open are imported inside the functions that open a backend:
# `zsad --help` imports this module for the backend names, and the bundle backends run without
# torch.

BACKENDS = (
    "torch-fp32",
    "torch-fp16",
    "onnxruntime",
    "openvino-fp32",
    "openvino-bf16",
    "openvino-int8",
    "trt",
    "rtx",
)


def check_backends(names: list[str]) -> None:
    """Fail with one line on names outside BACKENDS."""
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise ZsadError(f"--backend {','.join(unknown)}: choose from {', '.join(BACKENDS)}")


def check_device(backend: str, device: str) -> None:
    """torch-fp16 and the engines run only on a CUDA GPU, OpenVINO only on the CPU here."""
    if backend in ("torch-fp16", "trt", "rtx") and not device.startswith("cuda"):
        raise ZsadError(f"{backend} needs a CUDA GPU; this run is on {device}")
    if backend.startswith("openvino") and device != "cpu":
        raise ZsadError(f"{backend} is timed on the CPU (--device cpu); this run is on {device}")


def load_backbone(model: str, weights: Path | None, pretrained: str | None) -> Any:
    """The CLIP or DINO backbone behind the torch-* backends (torch imported here, not at
    import)."""
    from zsad.model import load_backbone as load

    return load(model, weights=weights, pretrained=pretrained)


def torch_backend(
    backbone: Any, name: str, image_size: int, device: str, outputs: tuple[str, ...]
) -> Any:
    """A TorchBackend for torch-fp32 / torch-fp16 over an already loaded backbone."""
    from zsad.model import build_encoder
    from zsad.model.backend import TorchBackend

    encoder = build_encoder(backbone, image_size=image_size, outputs=outputs)
    return TorchBackend(encoder, device=device, fp16=name == "torch-fp16")


def bundle_backend(name: str, bundle: Path | None, device: str, gpu_scoring: bool = False) -> Any:
    """The bundle's ONNX Runtime session (onnxruntime), OpenVINO model (openvino-PRECISION) or
    engine (trt, rtx); with ``gpu_scoring`` a bundle for STAPS or MuSc keeps its outputs on the
    GPU for set scoring."""
    if bundle is None:
        raise ZsadError(f"{name} runs a `zsad export` bundle: pass --bundle DIR")
    path = bundle / "encoder.engine" if name in ("trt", "rtx") else bundle
    if name in ("trt", "rtx") and not path.exists():
        raise ZsadError(f"{path}: no engine in the bundle (export with --engine {name})")
    from zsad.runtime.open import open_backend

    loaded = Bundle.load(bundle)
    on = "device" if gpu_scoring and loaded.method in SET_METHODS else "host"
    if name.startswith("openvino"):
        precision = name.split("-", 1)[1]
        return open_backend(
            path,
            device="cpu",
            outputs_on=on,
            backend="openvino",
            precision=precision,
            bundle=loaded,
        )
    # Named, so that --device auto's choice of runtime never swaps the row's runtime.
    runtime = "onnxruntime" if name == "onnxruntime" else "auto"
    return open_backend(path, device=device, outputs_on=on, backend=runtime, bundle=loaded)
