"""IP cameras and video servers over RTSP, decoded by PyAV (FFmpeg).

The stream is decoded continuously on the grabbing thread: an RTSP sender does not wait for a
reader, so a paused reader would only fill buffers and see ever older pictures. A software
trigger is answered by the first frame decoded after it (see ``zsad.data.cameras.source``); an
RTSP camera takes no trigger itself. RTP over TCP by default: a lost UDP packet costs a whole
frame, and a station's network is rarely worth that trade."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from zsad.data.cameras.source import GrabbingSource
from zsad.errors import ZsadError

INSTALL_HINT = "pip install 'zsad[camera]'"


class RtspSource(GrabbingSource):
    """Frames of an ``rtsp://`` stream; ``timeout_s`` bounds connecting and each read."""

    def __init__(
        self, url: str, trigger: str = "free", timeout_s: float = 5.0, transport: str = "tcp"
    ) -> None:
        super().__init__(redacted(url), trigger)
        if self.trigger_mode == "hardware":
            raise ZsadError(f"{self.name}: an RTSP stream takes no hardware trigger")
        try:
            import av
        except ImportError as exc:
            raise ZsadError(f"rtsp:// sources need PyAV ({INSTALL_HINT})") from exc
        self._av = av
        self.url = url
        self.timeout_s = timeout_s
        self.transport = transport
        self._container: Any = None
        self._frames: Any = None

    def _connect(self) -> None:
        av = self._av
        started = time.monotonic()
        try:
            self._container = av.open(
                self.url,
                options={"rtsp_transport": self.transport},
                timeout=(self.timeout_s, self.timeout_s),
            )
        except (av.error.FFmpegError, OSError) as exc:
            if time.monotonic() - started >= self.timeout_s:
                # FFmpeg reports its interrupted wait as whatever the read was doing then.
                raise ZsadError(
                    f"{self.name}: no answer within {self.timeout_s:g} s (is the camera or "
                    "server up, and the URL right?)"
                ) from exc
            raise ZsadError(f"{self.name}: cannot open the stream ({self._reason(exc)})") from exc
        if not self._container.streams.video:
            self._container.close()
            raise ZsadError(f"{self.name}: the stream has no video")
        self._frames = self._container.decode(self._container.streams.video[0])

    def _grab(self, timeout_s: float) -> None:
        # A decode blocks until a frame comes; the container's read timeout bounds the wait.
        try:
            frame = next(self._frames)
        except StopIteration:
            raise ZsadError(f"{self.name}: the stream ended") from None
        except Exception as exc:  # FFmpeg's timeout or a broken connection
            raise ZsadError(f"{self.name}: the stream stopped ({self._reason(exc)})") from exc
        # Every packet must be decoded; the decoded frame owns its planes, so it is kept as it is.
        self.hub.put(lambda: frame, time.monotonic())

    def _convert(self, raw: Any) -> np.ndarray:
        return raw.to_ndarray(format="rgb24")

    def _reason(self, exc: BaseException) -> str:
        # FFmpeg's messages quote the URL, password included.
        return (" ".join(str(exc).split()) or type(exc).__name__).replace(self.url, self.name)

    def _disconnect(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***``: a source's name goes into logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
