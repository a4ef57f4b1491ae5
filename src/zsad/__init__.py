"""zsad: zero-shot image anomaly detection (STAPS, HeadCLIP) for factory-floor GPUs.

import zsad
with zsad.Detector.from_bundle("bundles/headclip") as det:
    result = det.predict("part.png")   # result.score, result.anomaly_map, result.decision
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zsad.errors import ZsadError

__version__ = "0.1.0"
__all__ = [
    "Detector",
    "MethodOptions",
    "Result",
    "SetResult",
    "SetScoringConfig",
    "Stream",
    "ZsadError",
    "__version__",
]

if TYPE_CHECKING:
    from zsad.api.detector import Detector
    from zsad.api.results import Result, SetResult
    from zsad.api.scorers import MethodOptions
    from zsad.api.stream import Stream
    from zsad.scoring.pipeline import SetScoringConfig

_LAZY = {
    "Detector": "zsad.api.detector",
    "Stream": "zsad.api.stream",
    "Result": "zsad.api.results",
    "SetResult": "zsad.api.results",
    "MethodOptions": "zsad.api.scorers",
    "SetScoringConfig": "zsad.scoring.pipeline",
}


def __getattr__(name: str) -> Any:
    # Imported on first use: `import zsad` (and `zsad --help`) stays light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zsad' has no attribute {name!r}")
