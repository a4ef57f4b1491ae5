"""The station's interfaces to a production line: MQTT, OPC UA and an HTTP API with an operator
page, each fed from the journal so that a sink that is down loses nothing."""
