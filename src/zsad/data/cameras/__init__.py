"""zsad.data.cameras: frames from industrial and IP cameras (GenICam through a GenTL producer or
Aravis, RTSP), converted to RGB, with free-run, software and hardware triggers (source, pixels,
genicam, aravis, rtsp, uri), and a store that keeps frames on disk within a budget (store)."""
