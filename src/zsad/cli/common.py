"""Options and helpers shared by the zsad commands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from zsad.errors import ZsadError
from zsad.runtime.backend import EncoderBackend

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
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per encoder call.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (data, orders, clustering).")]
ProgressOpt = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Show progress bars on stderr.")
]


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
    try:
        from zsad.model import DualPathEncoder, load_clip
        from zsad.model.backend import TorchBackend
    except ImportError as exc:
        raise ZsadError(
            f"--model {model}: the PyTorch path needs the export extra ({exc.name} is missing): "
            "pip install 'zsad[export]'"
        ) from exc
    clip = load_clip(model, weights=weights, pretrained=pretrained)
    encoder = DualPathEncoder(clip, image_size=image_size, taps=taps, outputs=outputs)
    return TorchBackend(encoder, device=device)


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically: a temporary file beside the target, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
