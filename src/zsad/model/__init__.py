"""zsad.model: open_clip loading and the dual-path (taps, CLS, CSA+LHW) encoder; needs torch."""

from zsad.model.encoder import (
    OUTPUTS,
    DualPathEncoder,
    EncoderOutputs,
    default_taps,
)
from zsad.model.loading import DEFAULT_MODEL, TINY_MODEL, load_clip

__all__ = [
    "DEFAULT_MODEL",
    "OUTPUTS",
    "TINY_MODEL",
    "DualPathEncoder",
    "EncoderOutputs",
    "default_taps",
    "load_clip",
]
