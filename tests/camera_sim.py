"""The camera simulators the camera tests share: the GenTL producer the genicam wheel ships,
GStreamer's RTSP server (tests/gst_rtsp_server.py, run by the system python3), and Aravis's fake
GigE Vision camera, run only inside a network namespace (tests/aravis_in_netns.py)."""

from __future__ import annotations

import functools
import os
import shutil
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


ARAVIS_DEBS = "apt-get install aravis-tools gir1.2-aravis-0.8 libgirepository1.0-dev libcairo2-dev"


def netns_command() -> list[str]:
    """The unshare command that runs a process in a network namespace of its own: as root a
    plain one, otherwise inside a user namespace."""
    return ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-r", "-n"]


@functools.cache
def aravis_missing() -> str | None:
    """Why the fake GigE Vision camera cannot be run here, None when it can."""
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis  # noqa: F401
    except (ImportError, ValueError) as exc:
        return f"PyGObject or Aravis 0.8 is missing ({exc}): {ARAVIS_DEBS}; pip install PyGObject"
    for tool in ("unshare", "ip", "arv-fake-gv-camera-0.8"):
        if shutil.which(tool) is None:
            return f"no {tool} ({ARAVIS_DEBS} iproute2 util-linux)"
    check = subprocess.run(
        [*netns_command(), "ip", "link", "set", "lo", "up"], capture_output=True, text=True
    )
    if check.returncode:
        return f"cannot make a network namespace ({check.stderr.strip()})"
    return None
