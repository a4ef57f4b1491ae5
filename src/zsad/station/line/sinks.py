"""The sinks a station runs, built from their settings. Kept apart from the settings so the sink
modules can import them; each sink imports its own package (paho-mqtt, asyncua, starlette) only
when it starts."""

from __future__ import annotations

from zsad.station.line.config import LineConfig
from zsad.station.line.http import HttpSink
from zsad.station.line.hub import Sink
from zsad.station.line.mqtt import MqttSink
from zsad.station.line.opcua import OpcuaSink


def build_sinks(config: LineConfig) -> list[Sink]:
    """The sinks of ``config``, checked and constructed (nothing started yet)."""
    config.check()
    sinks: list[Sink] = []
    if config.mqtt is not None:
        sinks.append(MqttSink(config.mqtt))
    if config.opcua is not None:
        sinks.append(OpcuaSink(config.opcua))
    if config.http is not None:
        sinks.append(HttpSink(config.http))
    return sinks
