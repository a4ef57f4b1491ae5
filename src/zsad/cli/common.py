"""Options and helpers shared by the zsad commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsad.errors import ZsadError
from zsad.runtime.backend import EncoderBackend

DEFAULT_IMAGE_SIZE = 518

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="open_clip ViT architecture. 'zsad-tiny' is a small random model for tests and demos.",
    ),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option("--weights", help="Local checkpoint (.safetensors or a state-dict .pt) to load."),
]
PretrainedOpt = Annotated[
    str,
    typer.Option(
        "--pretrained",
        help="open_clip pretrained tag used when no --weights is given; 'random' asks for random "
        "weights (timing only).",
    ),
]
ImageSizeOpt = Annotated[
    int,
    typer.Option("--image-size", help="Encoder input size in pixels (multiple of the patch size)."),
]
DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="Where to run: auto, cpu, cuda (the GPU when one is present)."),
]
MaybeImageSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--image-size",
        help="Encoder input size in pixels (multiple of the patch size); default 518, or the "
        "bundle's with --bundle/--engine.",
    ),
]
BundleOpt = Annotated[
    Path | None,
    typer.Option(
        "--bundle",
        help="Run the encoder from a `zsad export` bundle (its folder, or one of its .onnx files) "
        "on ONNX Runtime; no torch needed. --model/--weights are then ignored.",
    ),
]
EngineOpt = Annotated[
    Path | None,
    typer.Option(
        "--engine",
        help="Run the encoder on a bundle's TensorRT engine (BUNDLE/encoder.engine) on the GPU.",
    ),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per encoder call.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (data, orders, clustering).")]
ProgressOpt = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Show progress bars on stderr.")
]


def require_torch(what: str, alternative: str = "") -> None:
    """Fail with one line naming the export extra when torch or open_clip is not installed."""
    try:
        import open_clip  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise ZsadError(
            f"{what} needs the export extra ({exc.name} is missing): pip install 'zsad[export]'"
            + alternative
        ) from exc


def torch_backend(
    model: str,
    weights: Path | None,
    pretrained: str,
    image_size: int,
    outputs: tuple[str, ...],
    device: str,
    *,
    taps: tuple[int, ...] | None = None,
) -> EncoderBackend:
    """Build the PyTorch reference backend; explains the missing extra when torch is absent."""
    require_torch(f"--model {model}", "; or run a bundle with --bundle")
    from zsad.model import DualPathEncoder, load_clip
    from zsad.model.backend import TorchBackend

    clip = load_clip(model, weights=weights, pretrained=pretrained)
    encoder = DualPathEncoder(clip, image_size=image_size, taps=taps, outputs=outputs)
    return TorchBackend(encoder, device=device)


def make_backend(
    model: str,
    weights: Path | None,
    pretrained: str,
    image_size: int | None,
    outputs: tuple[str, ...],
    device: str,
    *,
    bundle: Path | None = None,
    engine: Path | None = None,
    taps: tuple[int, ...] | None = None,
) -> EncoderBackend:
    """The bundle (ONNX Runtime) or engine (TensorRT) backend when given, else the torch one."""
    if bundle is None and engine is None:
        size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
        return torch_backend(model, weights, pretrained, size, outputs, device, taps=taps)
    from zsad.runtime.bundle import ENGINE_SUFFIXES, open_backend

    if bundle is not None and engine is not None:
        raise ZsadError("--bundle and --engine: give one of them")
    if engine is not None and engine.suffix not in ENGINE_SUFFIXES:
        raise ZsadError(f"--engine {engine}: expected an .engine or .plan file from zsad export")
    if bundle is not None and bundle.suffix in ENGINE_SUFFIXES:
        raise ZsadError(f"--bundle {bundle}: this is an engine file; pass it with --engine")
    path = engine if engine is not None else bundle
    backend = open_backend(path, device=device, image_size=image_size)
    missing = [name for name in outputs if name not in backend.outputs]
    if missing:
        method = backend.bundle.method  # type: ignore[attr-defined]
        raise ZsadError(
            f"{path}: exported for --method {method} (outputs {', '.join(backend.outputs)}); "
            f"this command needs {', '.join(outputs)}"
        )
    return backend
