"""zsad.station: score images one by one as they arrive, never losing or repeating a result."""
