"""The zsad Python API: the Detector and what it returns (see zsad.Detector)."""
