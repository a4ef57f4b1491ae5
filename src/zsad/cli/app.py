"""The `zsad` command line."""

from __future__ import annotations

import sys

import typer

from zsad.errors import ZsadError

app = typer.Typer(
    name="zsad",
    help="Zero-shot image anomaly detection (STAPS training-free, HeadCLIP) for factory GPUs.\n\n"
    "Start with `zsad demo`: it generates a small defect dataset and scores it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from zsad.cli import (
        bench_cmds,
        bench_station,
        calibrate_cmds,
        data_cmds,
        detect_cmds,
        export_cmds,
        station_cmds,
    )

    bench_station.register(bench_cmds.bench_app)
    bench_cmds.register(app)
    calibrate_cmds.register(app)
    data_cmds.register(app)
    detect_cmds.register(app)
    export_cmds.register(app)
    station_cmds.register(app)


def main() -> None:
    """Entry point: user mistakes print one line and exit 2; bugs keep their traceback."""
    _register()
    try:
        app()
    except ZsadError as exc:
        print(f"zsad: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("zsad: interrupted", file=sys.stderr)
        sys.exit(130)
