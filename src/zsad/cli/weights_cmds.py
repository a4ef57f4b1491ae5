"""`zsad weights`: turn the weights people have into a checkpoint `--weights` loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from zsad.errors import ZsadError

# zsad.model (torch) is imported inside the command: `zsad --help` starts without it.

weights_app = typer.Typer(
    name="weights",
    help="Weight files: recover a backbone checkpoint from an ONNX export (from-onnx).",
    no_args_is_help=True,
)


def from_onnx(
    model: Annotated[
        Path, typer.Argument(help="ONNX file embedding a HuggingFace Dinov2Model backbone.")
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="The .safetensors file to write (HuggingFace Dinov2 keys)."),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Recover a DINOv2 backbone's weights from an ONNX graph exported from HuggingFace.

    Every initializer is mapped back to its Dinov2Model key through the name of the node
    that consumes it (anonymous projection matrices included); each backbone tensor must be
    found exactly once, and heads that are not part of the backbone (decoders, classifiers)
    are left out. The file loads with `--model dinov2_* --weights OUT` and with
    transformers' Dinov2Model. Needs the onnx package (the export extra); no torch.
    """
    if out.suffix != ".safetensors":
        raise ZsadError(f"--out {out}: name a .safetensors file")
    from zsad.model.onnx_weights import recover_dinov2, save_backbone

    backbone = recover_dinov2(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_backbone(backbone, out, model)
    summary = {
        "source": str(model),
        "out": str(out),
        "model": backbone.model,
        "blocks": backbone.depth,
        "width": backbone.width,
        "patch_size": backbone.patch_size,
        "tensors": len(backbone.tensors),
        "left_out": backbone.skipped,
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(
        f"{out}: {len(backbone.tensors)} tensors of a Dinov2 backbone ({backbone.depth} blocks, "
        f"width {backbone.width}, patch {backbone.patch_size}); {backbone.skipped} "
        "initializers outside the backbone left out"
    )
    if backbone.model is None:
        typer.echo(
            "zsad: warning: no zsad model has this shape (`zsad models` lists them); the file "
            "still loads in transformers",
            err=True,
        )
    else:
        typer.echo(f"use it with: --model {backbone.model} --weights {out}")


def register(app: typer.Typer) -> None:
    """Attach the weights sub-commands to the app."""
    if not weights_app.registered_commands:
        weights_app.command("from-onnx")(from_onnx)
    app.add_typer(weights_app, name="weights")
