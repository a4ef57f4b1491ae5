"""``open_source``: a camera source from a URI.

- ``genicam://PRODUCER.cti`` (the first device), ``?serial=SERIAL`` or ``?index=N``; an absolute
  path takes three slashes: ``genicam:///opt/vendor/producer.cti``;
- ``aravis://[DEVICE-ID]``: a GigE Vision or USB3 Vision camera through Aravis, by the id
  ``arv-tool-0.8`` lists or its IP address (the first camera found without);
- ``rtsp://HOST[:PORT]/PATH`` (``rtsps://`` too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from zsad.data.cameras.aravis import AravisSource
from zsad.data.cameras.genicam import GenicamSource
from zsad.data.cameras.rtsp import RtspSource
from zsad.data.cameras.source import GrabbingSource, parse_trigger
from zsad.errors import ZsadError

SCHEMES = ("genicam", "aravis", "rtsp", "rtsps")


def check_uri(uri: str) -> None:
    """One-line ZsadError for a URI no camera can answer (scheme, producer file, query); nothing
    is imported or opened, so a station refuses it before loading anything."""
    parts = urlsplit(uri)
    if parts.scheme not in SCHEMES:
        raise ZsadError(
            f"source {uri}: unknown scheme {parts.scheme or '(none)'!r}; expected "
            "genicam://PRODUCER.cti[?serial=S|index=N], aravis://[DEVICE-ID] or rtsp://HOST/PATH"
        )
    if parts.scheme == "genicam":
        _genicam_target(uri)
    if parts.scheme == "aravis":
        _aravis_device(uri)


def open_source(
    uri: str,
    settings: dict[str, Any] | None = None,
    trigger: str = "free",
    timeout_s: float = 5.0,
) -> GrabbingSource:
    """The (not yet opened) source ``uri`` names; one-line ZsadError when it cannot be."""
    parse_trigger(trigger)
    check_uri(uri)
    if uri.startswith("genicam:"):
        return GenicamSource(*_genicam_target(uri), settings, trigger)
    if uri.startswith("aravis:"):
        return AravisSource(_aravis_device(uri), settings, trigger)
    if settings:
        raise ZsadError(f"source {uri}: an RTSP stream takes no camera settings")
    return RtspSource(uri, trigger=trigger, timeout_s=timeout_s)


def _genicam_target(uri: str) -> tuple[Path, str | None, int]:
    """(producer, serial, index) of a genicam:// URI."""
    parts = urlsplit(uri)
    path, query = parts.netloc + parts.path, parts.query
    producer = Path(path)
    if not path or not producer.is_file():
        raise ZsadError(f"source {uri}: no GenTL producer (.cti file) at {path or '(empty)'}")
    try:
        fields = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise ZsadError(f"source {uri}: malformed query ({exc})") from exc
    unknown = sorted(set(fields) - {"serial", "index"})
    if unknown or len(fields) > 1 or any(len(v) > 1 for v in fields.values()):
        raise ZsadError(f"source {uri}: the query takes one of serial=SERIAL or index=N")
    index = fields.get("index", ["0"])[0]
    if not index.isdigit():
        raise ZsadError(f"source {uri}: index={index} is not a device number")
    serial = fields["serial"][0] if "serial" in fields else None
    return producer, serial, int(index)


def _aravis_device(uri: str) -> str | None:
    """The device id (or address) of an aravis:// URI; None for the first camera found."""
    parts = urlsplit(uri)
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ZsadError(f"source {uri}: expected aravis://DEVICE-ID, with no path or query")
    return unquote(parts.netloc) or None


def parse_settings(pairs: list[str]) -> dict[str, str]:
    """``["ExposureTime=5000", ...]`` (``--camera-set``) -> {"ExposureTime": "5000", ...}."""
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ZsadError(f"camera setting {pair!r}: expected NAME=VALUE")
        settings[name.strip()] = value.strip()
    return settings
