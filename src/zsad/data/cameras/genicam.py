"""GenICam cameras (GigE Vision, USB3 Vision, ...) through a vendor's GenTL producer (.cti),
with harvesters as the GenTL consumer.

Settings are GenICam feature names written before acquisition starts (``{"ExposureTime":
5000}``); strings go through the feature's own parser, so ``"5000"`` sets a float and ``"Mono8"``
an enumeration. Trigger modes configure the standard features: free run turns ``TriggerMode``
off; ``software`` sets ``TriggerMode=On``, ``TriggerSource=Software`` and executes
``TriggerSoftware`` per trigger (a camera without those features keeps streaming and answers
each trigger with the next frame); ``hardware:LINE`` sets ``TriggerMode=On``,
``TriggerSource=LINE``. The user's settings are written after the trigger features, so they can
refine them (``TriggerActivation``, ``TriggerDelay``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from zsad.data.cameras.pixels import to_rgb
from zsad.data.cameras.source import CameraSettingError, GrabbingSource
from zsad.errors import ZsadError

INSTALL_HINT = "pip install 'zsad[camera]'"


def _harvester_class() -> Any:
    try:
        from harvesters.core import Harvester
    except ImportError as exc:
        raise ZsadError(f"genicam:// sources need harvesters and genicam ({INSTALL_HINT})") from exc
    return Harvester


def _copy(component: Any) -> tuple[np.ndarray, int, int, str]:
    """A GenTL buffer's image as (pixels copied out, width, height, pixel format)."""
    pixels = np.array(component.data, copy=True)
    return pixels, component.width, component.height, component.data_format


def _reason(exc: BaseException) -> str:
    # GenApi appends " : XException thrown in node ... (file ..., line ...)" to its message.
    return " ".join(str(exc).split(" : ")[0].split()) or type(exc).__name__


class GenicamSource(GrabbingSource):
    """Frames from one device of a GenTL producer, chosen by serial number or index."""

    rests_between_triggers = True

    def __init__(
        self,
        producer: Path,
        serial: str | None = None,
        index: int = 0,
        settings: dict[str, Any] | None = None,
        trigger: str = "free",
    ) -> None:
        which = f"serial={serial}" if serial is not None else f"index={index}"
        super().__init__(f"genicam://{producer}?{which}", trigger)
        self.producer = Path(producer)
        self.serial = serial
        self.index = index
        self.settings = dict(settings or {})
        self._harvester_class = _harvester_class()
        self._harvester: Any = None
        self._device: Any = None

    def _connect(self) -> None:
        if not self.producer.is_file():
            raise ZsadError(f"{self.name}: no GenTL producer at {self.producer}")
        harvester = self._harvester_class()
        try:
            harvester.add_file(str(self.producer), check_validity=True)
            harvester.update()
            self._device = self._create(harvester)
            self._harvester = harvester
            nodes = self._device.remote_device.node_map
            self._program(
                lambda name: self._has(nodes, name),
                lambda name, value: self._set(nodes, name, value),
                self.settings,
            )
            self._device.start()
        except BaseException:
            self._release(harvester)
            raise

    def _create(self, harvester: Any) -> Any:
        found = harvester.device_info_list
        serials = [info.serial_number for info in found]
        if self.serial is not None:
            if self.serial not in serials:
                raise ZsadError(f"{self.name}: no device with that serial (found {serials})")
            return harvester.create({"serial_number": self.serial})
        if not 0 <= self.index < len(found):
            raise ZsadError(f"{self.name}: no device at that index ({len(found)} found)")
        return harvester.create(self.index)

    @staticmethod
    def _has(nodes: Any, name: str) -> bool:
        try:
            nodes.get_node(name)
        except Exception:  # GenApi's LogicalErrorException: no such feature
            return False
        return True

    def _set(self, nodes: Any, name: str, value: Any) -> None:
        if not self._has(nodes, name):
            raise CameraSettingError(
                f"{self.name}: camera setting {name}: the camera has no such feature"
            )
        node = nodes.get_node(name)
        try:
            if isinstance(value, str):
                node.from_string(value)
            else:
                node.value = value
        except Exception as exc:  # GenApi's OutOfRange/InvalidArgument/Access exceptions
            raise CameraSettingError(
                f"{self.name}: camera setting {name}={value}: refused ({_reason(exc)})"
            ) from exc

    def _fire(self) -> None:
        if self.hub.camera_triggered:
            self._device.remote_device.node_map.get_node("TriggerSoftware").execute()

    def _drain(self) -> None:
        # Bounded by the buffers the camera can hold: a fast camera refills them as they go back.
        for _ in range(self._device.num_buffers):
            buffer = self._device.try_fetch(timeout=0.001)  # 0 would wait without end
            if buffer is None:
                return
            buffer.queue()
            self.hub.skipped()

    def _grab(self, timeout_s: float) -> None:
        buffer = self._device.try_fetch(timeout=timeout_s)
        if buffer is None:
            return
        arrived = time.monotonic()
        with buffer:  # requeued on exit: what the hub keeps must be a copy
            self.hub.put(lambda: _copy(buffer.payload.components[0]), arrived)

    def _convert(self, raw: tuple[np.ndarray, int, int, str]) -> np.ndarray:
        return to_rgb(*raw)

    def _disconnect(self) -> None:
        self._release(self._harvester)
        self._harvester = None

    def _release(self, harvester: Any) -> None:
        if self._device is not None:
            self._device.stop()
            self._device.destroy()
            self._device = None
        if harvester is not None:
            harvester.reset()
