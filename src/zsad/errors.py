"""User-facing errors: one line that names the file or option and the problem."""

from __future__ import annotations


class ZsadError(Exception):
    """An error caused by the user's input; the CLI prints its message without a traceback."""
