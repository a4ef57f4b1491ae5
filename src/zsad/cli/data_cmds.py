"""Commands about data and models: make-data, models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsad.api.encoders import model_image_size, require_torch
from zsad.cli.options import SeedOpt

# The commands import what they run inside their functions: `zsad --help` starts without the
# synthetic data generator (SciPy) or zsad.model (torch).


def make_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the MVTec-layout dataset into.")],
    seed: SeedOpt = 0,
    size: Annotated[int, typer.Option("--size", min=32, help="Image side in pixels.")] = 128,
    categories: Annotated[
        str | None,
        typer.Option("--categories", help="Comma-separated subset of the synthetic categories."),
    ] = None,
    n_train: Annotated[
        int, typer.Option("--n-train", min=0, help="Good training images per category.")
    ] = 10,
    n_good: Annotated[int, typer.Option("--n-good", min=0, help="Good test images.")] = 8,
    n_defect: Annotated[
        int, typer.Option("--n-defect", min=0, help="Test images per defect type.")
    ] = 4,
) -> None:
    """Generate small synthetic categories (textures and objects with defects and masks)."""
    from zsad.data.synthetic import make_dataset

    names = categories.split(",") if categories else None
    written = make_dataset(
        out_dir,
        seed=seed,
        categories=names,
        size=size,
        n_train=n_train,
        n_good=n_good,
        n_defect=n_defect,
    )
    typer.echo(f"wrote {len(written)} categories to {out_dir}: {', '.join(written)}")


def models(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per model.")] = False,
) -> None:
    """List the image encoders zsad can run (needs the export extra): name, patch size, the
    input size zsad uses by default, the methods, and open_clip's pretrained tags."""
    import json

    require_torch("zsad models")
    from zsad.model.loading import supported_models

    for model in supported_models():
        model["default_image_size"] = model_image_size(model["name"], None)
        if as_json:
            typer.echo(json.dumps(model))
            continue
        tags = model["pretrained"]
        shown = ",".join(tags[:3]) + (f" (+{len(tags) - 3})" if len(tags) > 3 else "")
        typer.echo(
            f"{model['name']:<30} patch {model['patch_size']:>2}  default "
            f"{model['default_image_size']:>3} px  {'/'.join(model['methods']):<20} {shown or '-'}"
        )


def register(app: typer.Typer) -> None:
    """Attach these commands to the app."""
    app.command("make-data")(make_data)
    app.command("models")(models)
