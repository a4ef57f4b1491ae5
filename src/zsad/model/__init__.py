"""zsad.model: backbone loading (open_clip CLIP, DINO/DINOv2), the dual-path CLIP encoder (taps,
CLS, CSA+LHW) and the DINO tap encoder; needs torch."""

from zsad.model.encoder import (
    OUTPUTS,
    DualPathEncoder,
    EncoderOutputs,
    default_taps,
)
from zsad.model.loading import (
    DEFAULT_MODEL,
    TINY_MODEL,
    build_encoder,
    load_backbone,
    load_clip,
)
from zsad.model.vit import TapEncoder

__all__ = [
    "DEFAULT_MODEL",
    "OUTPUTS",
    "TINY_MODEL",
    "DualPathEncoder",
    "EncoderOutputs",
    "TapEncoder",
    "build_encoder",
    "default_taps",
    "load_backbone",
    "load_clip",
]
