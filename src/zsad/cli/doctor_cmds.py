"""`zsad doctor`: whether a bundle can run on this machine, and why not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from zsad.formats.methods import DEFAULT_BANK

# zsad.runtime.doctor probes the runtimes: imported inside the command, so `zsad --help` does not.


def doctor(
    bundle: Annotated[
        Path | None,
        typer.Argument(
            metavar="BUNDLE", help="An exported bundle folder to check against this machine."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    bank: Annotated[
        int,
        typer.Option(
            min=2, help="The stream bank size K whose memory is checked against this machine."
        ),
    ] = DEFAULT_BANK,
) -> None:
    """Explain this machine and a bundle in one screen.

    Reports the CPU and its vector extensions, ONNX Runtime and its providers, OpenVINO and its
    devices, TensorRT and TensorRT-RTX, the CUDA driver and GPU, and CuPy; with BUNDLE, what it
    needs (method, image size, outputs, files checked against their SHA-256, the engine's
    TensorRT flavour, version and compute capabilities, the memory a stream with a bank of
    --bank images takes and whether it fits). Says which backend `--device auto` picks and
    why, and prints every mismatch in one line.

    Exit code 0: the bundle (if given) runs here. 1: a mismatch prevents it.
    """
    from zsad.runtime.doctor import diagnose, render

    report = diagnose(bundle, bank)
    typer.echo(json.dumps(report) if as_json else render(report))
    if not report["runs"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Attach the doctor command to the app."""
    app.command("doctor")(doctor)
