"""The `zsad` command line."""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.26 runs on its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:
    from click import exceptions as click_exceptions

from zsad.cli import (
    bench_cmds,
    calibrate_cmds,
    data_cmds,
    detect_cmds,
    doctor_cmds,
    eval_cmds,
    export_cmds,
    station_cmds,
    weights_cmds,
)
from zsad.errors import ZsadError

app = typer.Typer(
    name="zsad",
    help="Zero-shot image anomaly detection (training-free MuSc and STAPS, HeadCLIP) for "
    "factory GPUs.\n\n"
    "Start with `zsad demo`: it generates a small defect dataset and scores it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

bench_cmds.register(app)
calibrate_cmds.register(app)
data_cmds.register(app)
detect_cmds.register(app)
doctor_cmds.register(app)
eval_cmds.register(app)
export_cmds.register(app)
station_cmds.register(app)
weights_cmds.register(app)


def main() -> None:
    """Entry point: user mistakes print one line and exit 2; bugs keep their traceback."""
    try:
        code = app(standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else exc.format_message())
        code = 0
    except click_exceptions.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "zsad"
        message = " ".join(exc.format_message().split()).replace("Value error, ", "")
        print(f"zsad: error: {message} (see {command} --help)", file=sys.stderr)
        code = 2
    except click_exceptions.ClickException as exc:
        print(f"zsad: error: {' '.join(exc.format_message().split())}", file=sys.stderr)
        code = exc.exit_code
    except ZsadError as exc:
        print(f"zsad: error: {exc}", file=sys.stderr)
        code = 2
    except (KeyboardInterrupt, typer.Abort):
        print("zsad: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)
