"""The camera simulators the camera tests share: the GenTL producer the genicam wheel ships, and
GStreamer's RTSP server (tests/gst_rtsp_server.py, run by the system python3)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

RTSP_SERVER = Path(__file__).with_name("gst_rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # GStreamer's GObject bindings are Debian packages
GENTL_MISSING = "the GenTL simulator needs harvesters and genicam (pip install 'zsad[camera]')"


def _gentl_simulator() -> Path | None:
    try:
        import genicam
        import harvesters.core  # noqa: F401
    except ImportError:
        return None
    found = Path(genicam.__file__).parent / "viky.cti"
    return found if found.is_file() else None


GENTL_SIMULATOR = _gentl_simulator()
GENTL_URI = f"genicam://{GENTL_SIMULATOR}"


@functools.cache
def rtsp_missing() -> str | None:
    """Why GStreamer's RTSP server or PyAV cannot be used here, None when both can."""
    try:
        import av  # noqa: F401
    except ImportError:
        return "PyAV is not installed (pip install 'zsad[camera]')"
    try:
        check = subprocess.run(
            [SYSTEM_PYTHON, str(RTSP_SERVER), "--check"], capture_output=True, text=True, timeout=60
        )
    except OSError:
        return f"no {SYSTEM_PYTHON}"
    if check.returncode:
        return (
            f"GStreamer's RTSP server is not usable ({check.stderr.strip().splitlines()[-1]}); "
            "apt-get install gstreamer1.0-rtsp gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
            "python3-gi gir1.2-gst-rtsp-server-1.0"
        )
    return None
