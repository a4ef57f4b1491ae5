"""Commands about data and models: make-data, models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zsad.cli.options import SeedOpt


def make_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the MVTec-layout dataset into.")],
    seed: SeedOpt = 0,
    size: Annotated[int, typer.Option("--size", min=32, help="Image side in pixels.")] = 128,
    categories: Annotated[
        str | None,
        typer.Option("--categories", help="Comma-separated subset of the synthetic categories."),
    ] = None,
) -> None:
    """Generate small synthetic categories (textures and objects with defects and masks)."""
    from zsad.data.synthetic import make_dataset

    names = categories.split(",") if categories else None
    written = make_dataset(out_dir, seed=seed, categories=names, size=size)
    typer.echo(f"wrote {len(written)} categories to {out_dir}: {', '.join(written)}")


def models() -> None:
    """List the image encoders zsad can build (needs the export extra)."""
    from zsad.model.loading import available_models

    for name in available_models():
        typer.echo(name)


def register(app: typer.Typer) -> None:
    """Attach these commands to the app."""
    app.command("make-data")(make_data)
    app.command("models")(models)
