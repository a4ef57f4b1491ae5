"""Calibrate a Detector's OK/NG threshold from images scored exactly as a station scores them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from zsad.api.detector import Detector, Stream
from zsad.data.datasets import Sample
from zsad.data.images import ImageLoadError
from zsad.errors import ZsadError, echo_stderr
from zsad.formats.methods import DEFAULT_BANK
from zsad.formats.thresholds import f1_max_threshold, false_alarm_threshold, store_threshold


def score_sequence(
    stream: Stream, paths: Sequence[Any], echo: Callable[[str], None] = echo_stderr
) -> tuple[np.ndarray, list[Any]]:
    """Score files in order as a stream; returns (scores, the paths that were readable)."""
    kept: list[Any] = []
    scores: dict[int, float] = {}
    for path in paths:
        try:
            results = stream.add(path)  # an unreadable file takes no place in the stream
        except ImageLoadError as exc:
            echo(f"zsad: skipped {exc}")
            continue
        scores.update({r.index: r.score for r in results})
        kept.append(path)
    if not kept:
        raise ZsadError(f"calibrate-threshold: none of the {len(paths)} image(s) could be read")
    scores.update({r.index: r.score for r in stream.flush()})
    return np.array([scores[i] for i in range(len(kept))]), kept


def calibrate_threshold(
    detector: Detector,
    samples: list[Sample],
    *,
    bank: int = DEFAULT_BANK,
    false_alarm_rate: float = 0.01,
    labelled: bool = False,
    store: bool = True,
    echo: Callable[[str], None] = echo_stderr,
) -> dict[str, Any]:
    """The threshold entry (rule, score, settings, ...) for ``detector``'s method; with
    ``labelled`` the samples carry 0/1 labels and the threshold maximises F1, else they are good
    images and at most ``false_alarm_rate`` of them are called NG. ``store`` writes it into the
    detector's bundle."""
    bundle = detector.bundle
    if bundle is None:
        raise ZsadError("calibrate-threshold: needs --bundle DIR (the threshold is stored there)")
    stream = detector.stream(bank, threshold=float("inf"))  # scores only: no bundle lookup
    scores, kept = score_sequence(stream, [s.path for s in samples], echo)
    entry: dict[str, Any] = {
        "method": detector.name,
        "settings": stream.settings,
        "images": len(kept),
    }
    try:
        if not labelled:
            value = false_alarm_threshold(scores, false_alarm_rate)
            entry.update(rule="false-alarm-rate", false_alarm_rate=false_alarm_rate)
            entry.update(good_flagged=int((scores > value).sum()))
            if len(kept) * false_alarm_rate < 1:
                echo(
                    f"zsad: warning: {len(kept)} good images cannot resolve a false-alarm rate "
                    f"of {false_alarm_rate:g}; the threshold is the highest good score"
                )
        else:
            by_path = {s.path: s.label for s in samples}
            truth = [by_path[p] for p in kept]
            value, f1 = f1_max_threshold(scores, truth)
            entry.update(rule="f1-max", f1=round(f1, 4), defective=int(sum(truth)))
    except ValueError as exc:
        raise ZsadError(f"calibrate-threshold: {exc}") from exc
    entry["score"] = value
    if store:
        store_threshold(bundle, entry)
    return entry
