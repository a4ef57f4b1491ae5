"""User-facing errors and notes: one line that names the file or option and the problem."""

from __future__ import annotations

import sys


class ZsadError(Exception):
    """An error caused by the user's input; the CLI prints its message without a traceback."""


class ServiceUnavailable(ZsadError):
    """A remote encoder (an inference server) is down or too slow; retrying later may succeed."""


def echo_stderr(line: str) -> None:
    """Print one line for the user on stderr (the default ``echo`` of long-running functions)."""
    print(line, file=sys.stderr)
