"""zsad.data.cameras: frames from industrial and IP cameras (GenICam through a GenTL producer,
RTSP), converted to RGB, with free-run, software and hardware triggers (source, pixels, genicam,
rtsp, uri), and a store that keeps frames on disk within a budget (store)."""
