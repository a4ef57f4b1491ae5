"""GigE Vision and USB3 Vision cameras through Aravis, read with its GObject API (PyGObject).

Aravis is the open-source GenICam stack most Linux distributions package (Debian:
``gir1.2-aravis-0.8``); it needs no vendor GenTL producer. The contract is the genicam source's:
settings are GenICam feature names written before acquisition, each string through the
feature's own parser; ``software`` sets ``TriggerSelector=FrameStart``, ``TriggerMode=On``,
``TriggerSource=Software`` and executes ``TriggerSoftware`` per trigger (a camera without it
keeps streaming and answers each trigger with the next frame); ``hardware:LINE`` sets
``TriggerSource=LINE``. Buffers are converted by the ``PixelFormat`` read once acquisition is
configured (it cannot change while the camera streams)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import numpy as np

from zsad.data.cameras.pixels import supported_formats, to_rgb
from zsad.data.cameras.source import CameraSettingError, GrabbingSource
from zsad.errors import ZsadError

INSTALL_HINT = (
    "apt-get install gir1.2-aravis-0.8 libgirepository1.0-dev libcairo2-dev, then pip install "
    "'zsad[aravis]'"
)
BUFFERS = 8  # queued at the camera's stream: a burst of triggers is not lost to a busy reader


def _aravis() -> tuple[Any, Any]:
    """(Aravis, GLib) from PyGObject; one-line ZsadError naming what to install."""
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis, GLib
    except (ImportError, ValueError) as exc:  # ValueError: no Aravis 0.8 typelib
        raise ZsadError(
            f"aravis:// sources need PyGObject and Aravis 0.8 ({INSTALL_HINT})"
        ) from exc
    return Aravis, GLib


class AravisSource(GrabbingSource):
    """Frames of one camera Aravis finds, by device id or address (the first one without)."""

    rests_between_triggers = True

    def __init__(
        self,
        device_id: str | None = None,
        settings: dict[str, Any] | None = None,
        trigger: str = "free",
    ) -> None:
        super().__init__(f"aravis://{device_id or ''}", trigger)
        self.device_id = device_id
        self.settings = dict(settings or {})
        self._lib, self._glib = _aravis()
        self._camera: Any = None
        self._stream: Any = None
        self._pixel_format = ""
        self._control_lost = threading.Event()

    def _connect(self) -> None:
        lib = self._lib
        lib.update_device_list()
        found = [lib.get_device_id(i) for i in range(lib.get_n_devices())]
        try:
            self._camera = lib.Camera.new(self.device_id)
        except self._glib.Error as exc:
            raise ZsadError(
                f"{self.name}: cannot open the camera ({_reason(exc)}; found {found})"
            ) from exc
        try:
            device = self._camera.get_device()
            self._control_lost.clear()
            device.connect("control-lost", lambda *_: self._control_lost.set())
            self._program(
                lambda name: device.get_feature(name) is not None,
                lambda name, value: self._set(device, name, value),
                self.settings,
            )
            self._pixel_format = device.get_string_feature_value("PixelFormat")
            if self._pixel_format not in supported_formats():
                raise CameraSettingError(
                    f"{self.name}: camera setting PixelFormat={self._pixel_format}: not read by "
                    f"zsad (set one of {', '.join(supported_formats())})"
                )
            self._stream = self._camera.create_stream(None, None)
            payload = self._camera.get_payload()
            for _ in range(BUFFERS):
                self._stream.push_buffer(lib.Buffer.new_allocate(payload))
            self._camera.start_acquisition()
        except self._glib.Error as exc:
            self._release()
            raise ZsadError(f"{self.name}: {_reason(exc)}") from exc
        except BaseException:
            self._release()
            raise

    def _set(self, device: Any, name: str, value: Any) -> None:
        node = device.get_feature(name)
        if node is None or not hasattr(node, "set_value_from_string"):
            raise CameraSettingError(
                f"{self.name}: camera setting {name}: the camera has no such feature"
            )
        text = str(value).lower() if isinstance(value, bool) else str(value)
        try:
            node.set_value_from_string(text)
        except self._glib.Error as exc:
            raise CameraSettingError(
                f"{self.name}: camera setting {name}={value}: refused ({_reason(exc)})"
            ) from exc

    def _fire(self) -> None:
        if self.hub.camera_triggered:
            try:
                self._camera.get_device().execute_command("TriggerSoftware")
            except self._glib.Error as exc:
                raise ZsadError(
                    f"{self.name}: the software trigger failed ({_reason(exc)})"
                ) from exc

    def _drain(self) -> None:
        # Bounded by the buffers the stream holds: a fast camera refills them as they go back.
        for _ in range(BUFFERS):
            buffer = self._stream.try_pop_buffer()
            if buffer is None:
                return
            self._stream.push_buffer(buffer)
            self.hub.skipped()

    def _check_alive(self) -> None:
        if self._control_lost.is_set():
            raise ZsadError(f"{self.name}: the camera stopped answering (control lost)")

    def _grab(self, timeout_s: float) -> None:
        self._check_alive()
        buffer = self._stream.timeout_pop_buffer(int(timeout_s * 1e6))
        if buffer is None:
            return
        arrived = time.monotonic()
        try:
            # An incomplete frame (packets lost on the network) answers no trigger.
            if buffer.get_status() == self._lib.BufferStatus.SUCCESS:
                self.hub.put(lambda: _copy(buffer, self._pixel_format), arrived)
            else:
                self.hub.skipped()
        finally:
            self._stream.push_buffer(buffer)

    def _convert(self, raw: tuple[np.ndarray, int, int, str]) -> np.ndarray:
        return to_rgb(*raw)

    def _disconnect(self) -> None:
        self._release()

    def _release(self) -> None:
        camera, self._camera, self._stream = self._camera, None, None
        if camera is not None:
            # A camera gone cannot be told to stop; dropping the object releases it anyway.
            with contextlib.suppress(self._glib.Error):
                camera.stop_acquisition()


def _copy(buffer: Any, pixel_format: str) -> tuple[np.ndarray, int, int, str]:
    """An Aravis buffer's image as (pixels copied out, width, height, pixel format)."""
    # get_image_data returns a bytes copy: the buffer goes back to the stream right after.
    pixels = np.frombuffer(buffer.get_image_data(), np.uint8)
    return pixels, buffer.get_image_width(), buffer.get_image_height(), pixel_format


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)  # GLib.Error: the message without its domain
    return " ".join(text.split()) or type(exc).__name__
