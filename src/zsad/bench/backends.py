"""The encoder backends a bench times, by --backend name: torch FP32/FP16 or a bundle's runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zsad.errors import ZsadError
from zsad.formats.bundle import Bundle
from zsad.runtime.open import open_backend
from zsad.scoring.pipeline import METHODS as SET_METHODS

# zsad.model (torch) is imported inside the torch-* functions: `zsad --help` imports this module,
# and the bundle backends run without torch.

BACKENDS = ("torch-fp32", "torch-fp16", "onnxruntime", "trt", "rtx")


def check_backends(names: list[str]) -> None:
    """Fail with one line on names outside BACKENDS."""
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise ZsadError(f"--backend {','.join(unknown)}: choose from {', '.join(BACKENDS)}")


def check_device(backend: str, device: str) -> None:
    """torch-fp16 and the engines run only on a CUDA GPU."""
    if backend in ("torch-fp16", "trt", "rtx") and not device.startswith("cuda"):
        raise ZsadError(f"{backend} needs a CUDA GPU; this run is on {device}")


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
    """The bundle's ONNX Runtime session (onnxruntime) or its engine (trt, rtx); with
    ``gpu_scoring`` a bundle for STAPS or MuSc keeps its outputs on the GPU for set scoring."""
    if bundle is None:
        raise ZsadError(f"{name} runs a `zsad export` bundle: pass --bundle DIR")
    path = bundle / "encoder.engine" if name in ("trt", "rtx") else bundle
    if name in ("trt", "rtx") and not path.exists():
        raise ZsadError(f"{path}: no engine in the bundle (export with --engine {name})")
    loaded = Bundle.load(bundle)
    on = "device" if gpu_scoring and loaded.method in SET_METHODS else "host"
    return open_backend(path, device=device, image_size=None, outputs_on=on, bundle=loaded)
