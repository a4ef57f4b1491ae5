"""zsad.calibration."""
