"""zsad: zero-shot image anomaly detection (STAPS, HeadCLIP) for factory-floor GPUs."""

__version__ = "0.1.0"
