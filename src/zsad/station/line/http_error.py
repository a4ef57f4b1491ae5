"""The one exception of the HTTP API: a request it refuses, with the status to answer."""

from __future__ import annotations


class HttpError(Exception):
    """A request the API refuses: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
