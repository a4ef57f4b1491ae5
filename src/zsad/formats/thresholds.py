"""Decision thresholds: NG when an image's score is above the threshold, OK otherwise.

Two rules: a false-alarm rate on good images only (what a new line has), or F1-max on a labelled
validation set. Thresholds are stored in the bundle's bundle.json per method, with how they were
made, so a station picks up the one that matches its scoring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from zsad.errors import ZsadError
from zsad.formats.bundle import Bundle, write_meta


def _scores(scores: ArrayLike) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    if s.ndim != 1 or s.size == 0 or not np.isfinite(s).all():
        raise ValueError("scores must be a non-empty 1-D array of finite values")
    return s


def false_alarm_threshold(good_scores: ArrayLike, rate: float) -> float:
    """The lowest threshold that flags at most ``rate`` of these good images as NG.

    With fewer than 1/rate images the rate cannot be resolved and the result is the largest
    score (no good image flagged); the caller reports that.
    """
    s = np.sort(_scores(good_scores))
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"the false-alarm rate must be in [0, 1), got {rate}")
    allowed = math.floor(rate * s.size + 1e-9)  # good images allowed above the threshold
    return float(s[s.size - 1 - allowed])


def f1_max_threshold(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of "score > threshold" = NG over a labelled set."""
    s = _scores(scores)
    y = np.asarray(labels).astype(bool)
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    if y.all() or not y.any():
        raise ValueError("F1-max needs both good (0) and defective (1) images")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # Cut after each run of equal scores: the first i images (highest scores) are called NG.
    last_of_run = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    tp = np.cumsum(y)[last_of_run]
    called = last_of_run + 1
    f1 = 2 * tp / (called + y.sum())
    best = int(np.argmax(f1))
    i = last_of_run[best]
    # Midway to the next lower score, so both neighbours are on the right side of the line.
    threshold = np.nextafter(s[i], -np.inf) if i + 1 == s.size else (s[i] + s[i + 1]) / 2
    return float(threshold), float(f1[best])


def store_threshold(bundle: Bundle, entry: dict[str, Any]) -> None:
    """Record ``entry`` (with 'method' and 'score') as the bundle's threshold for its method."""
    meta = dict(bundle.meta)
    thresholds = dict(meta.get("thresholds") or {})
    thresholds[entry["method"]] = {
        **entry,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    meta["thresholds"] = thresholds
    write_meta(bundle.root, meta)


def bundle_threshold(bundle: Bundle, method: str) -> dict[str, Any] | None:
    """The stored threshold entry for ``method``, or None."""
    entry = (bundle.meta.get("thresholds") or {}).get(method)
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("score"), (int, float)):
        raise ZsadError(f"{bundle.root}/bundle.json: malformed threshold for {method}")
    return entry


# Settings a stored threshold may lack, and the value such a threshold was calibrated with: a
# STAPS threshold without "image_score" was calibrated on patch-grid maxima.
UNRECORDED_SETTINGS = {"image_score": "grid"}


def mismatched_settings(entry: dict[str, Any], settings: dict[str, Any]) -> Sequence[str]:
    """Settings that differ between a stored threshold and the current scoring."""
    stored = {**UNRECORDED_SETTINGS, **(entry.get("settings") or {})}
    return sorted(k for k in stored.keys() & settings.keys() if stored[k] != settings[k])
