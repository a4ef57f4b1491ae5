"""Decision thresholds: false-alarm rate on good images, F1-max on a labelled set."""

from __future__ import annotations

import numpy as np
import pytest

from zsad.formats.thresholds import f1_max_threshold, false_alarm_threshold


def test_false_alarm_threshold_flags_at_most_the_rate() -> None:
    scores = np.random.default_rng(0).random(200)
    for rate in (0.0, 0.01, 0.05, 0.1, 0.25):
        threshold = false_alarm_threshold(scores, rate)
        flagged = int((scores > threshold).sum())
        assert flagged == int(np.floor(rate * 200 + 1e-9))
    # Too few images to resolve the rate: nothing flagged.
    assert false_alarm_threshold([0.2, 0.5, 0.3], 0.01) == 0.5


def test_f1_max_threshold_separates_a_separable_set() -> None:
    threshold, f1 = f1_max_threshold([0.1, 0.9, 0.2, 0.8], [0, 1, 0, 1])
    assert threshold == pytest.approx(0.5) and f1 == 1.0


def test_f1_max_threshold_trades_errors() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    labels = np.array([0, 0, 1, 0, 1, 1])
    threshold, f1 = f1_max_threshold(scores, labels)
    predicted = scores > threshold
    tp = int((predicted & (labels == 1)).sum())
    assert f1 == pytest.approx(2 * tp / (predicted.sum() + labels.sum()))
    # Brute force over every cut agrees.
    best = max(
        2 * int(((scores > t) & (labels == 1)).sum()) / ((scores > t).sum() + labels.sum())
        for t in np.append(scores, 0.0)
    )
    assert f1 == pytest.approx(best)


def test_thresholds_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="both good"):
        f1_max_threshold([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="false-alarm"):
        false_alarm_threshold([0.1], 1.5)
    with pytest.raises(ValueError, match="finite"):
        false_alarm_threshold([np.nan, 0.1], 0.1)
