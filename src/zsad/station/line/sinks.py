"""The sinks a station runs, built from their settings; each sink's package is imported only when
that sink is asked for. Kept apart from the settings so the sink modules can import them."""

from __future__ import annotations

from zsad.station.line.config import LineConfig
from zsad.station.line.hub import Sink


def build_sinks(config: LineConfig) -> list[Sink]:
    """The sinks of ``config``, checked and constructed (nothing started yet)."""
    config.check()
    sinks: list[Sink] = []
    if config.mqtt is not None:
        from zsad.station.line.mqtt import MqttSink

        sinks.append(MqttSink(config.mqtt))
    if config.opcua is not None:
        from zsad.station.line.opcua import OpcuaSink

        sinks.append(OpcuaSink(config.opcua))
    if config.http is not None:
        from zsad.station.line.http import HttpSink

        sinks.append(HttpSink(config.http))
    return sinks
