"""An RTSP server on 127.0.0.1 for the camera tests: GStreamer's videotestsrc encoded as VP8.

Run with the system Python (GStreamer's GObject bindings are Debian packages, not wheels):
``python3 gst_rtsp_server.py PORT [WIDTH HEIGHT FPS]``. It prints ``ready`` once it listens and
serves until killed; ``python3 gst_rtsp_server.py --check`` exits 0 when every element it needs
is installed and otherwise names the missing ones. VP8 because an RTP JPEG payload gave clients
no frames."""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

ELEMENTS = ("videotestsrc", "vp8enc", "rtpvp8pay")


def main() -> None:
    """Serve rtsp://127.0.0.1:PORT/test until the process is killed."""
    if sys.argv[1:] == ["--check"]:
        Gst.init(None)
        missing = [name for name in ELEMENTS if Gst.ElementFactory.find(name) is None]
        sys.exit(f"missing GStreamer elements: {', '.join(missing)}" if missing else 0)
    port, width, height, fps = (sys.argv[1:] + ["160", "120", "25"])[:4]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},"
        f"framerate={fps}/1 ! vp8enc deadline=1 keyframe-max-dist={fps} ! rtpvp8pay name=pay0 )"
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


main()
