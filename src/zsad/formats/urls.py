"""URLs and addresses from the command line, which never carry credentials: the command line of a
process is readable by every user of the machine (ps, /proc), so secrets come from a file or an
environment variable instead."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from zsad.errors import ZsadError, echo_stderr


def split_url(url: str, flag: str, instead: str) -> SplitResult:
    """``url`` split into its parts; one with user info (``user:secret@``) is refused."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        # The message leaves the URL out: repeating it would print the secret again.
        raise ZsadError(
            f"{flag}: refused, it carries a user name or password ('user:password@'), which "
            f"anyone on this machine can read in the process list; {instead}"
        )
    return parts


def read_secret(env: str, file: Path | None, what: str) -> str | None:
    """A secret from the first line of ``file`` or else the environment variable ``env``."""
    if file is not None:
        try:
            with file.open() as handle:
                secret = handle.readline().strip()
                mode = os.fstat(handle.fileno()).st_mode
        except OSError as exc:
            raise ZsadError(f"{file}: cannot read the {what} ({exc.strerror or exc})") from exc
        if not secret:
            raise ZsadError(f"{file}: the first line of the {what} file is empty")
        if mode & 0o077:
            _warn_open_secret(file, mode & 0o777, what)
        return secret
    return os.environ.get(env) or None


@functools.cache
def _warn_open_secret(file: Path, mode: int, what: str) -> None:
    # Cached: the secret is read again at each check and each reconnect; one warning is enough.
    echo_stderr(
        f"zsad: warning: {file}: the {what} file is open to group or others (mode "
        f"{mode:04o}); chmod 600 {file}"
    )
