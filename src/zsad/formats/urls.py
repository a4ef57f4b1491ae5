"""URLs and addresses from the command line, which never carry credentials: the command line of a
process is readable by every user of the machine (ps, /proc), so secrets come from a file or an
environment variable instead."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

from zsad.errors import ZsadError


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
