"""Split a set into subsets scored on their own, and order a set by content.

Mutual scoring holds every image's taps and an N x P x N table at once, and its time grows as N
squared; MuSc therefore scores a large test set in parts (``--divide_num``), each part holding a
share of every defect type. Here a set of N images is dealt into subsets of nearly equal size:
strata (a folder, a label) are taken in name order, the members of each in content order then a
seeded shuffle, dealt round-robin, so every subset holds its share of each stratum and the split
depends on the images and the seed, never on the order they were listed in.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

# The smallest set whose scores mean something (docs/methods.md, "How small a set can be").
MIN_SET_SIZE = 5
# Of a memory budget, the share the taps, the MSM table and the expert maps may take; the rest
# is for the encoder, decoding and MSM's temporary buffers.
_SCORING_SHARE = 0.5


def canonical_order(keys: Sequence[str], names: Sequence[str | None]) -> np.ndarray:
    """Input positions sorted by content digest (equal content: by name), so any listing of
    the same images gives the same sequence."""
    return np.array(
        sorted(range(len(keys)), key=lambda i: (keys[i], names[i] or "")), dtype=np.int64
    )


def subset_count(
    n: int, subset_size: int | None = None, divide: int | None = None, floor: int = MIN_SET_SIZE
) -> int:
    """How many subsets N images make: ``divide`` of them, or about ``subset_size`` images
    each, never so many that one holds fewer than ``floor`` images."""
    if subset_size is not None and subset_size < 1:
        raise ValueError(f"subset_size must be >= 1, got {subset_size}")
    if divide is not None and divide < 1:
        raise ValueError(f"divide must be >= 1, got {divide}")
    wanted = divide if divide is not None else math.ceil(n / (subset_size or max(n, 1)))
    return max(1, min(wanted, n // floor))


def split_subsets(
    keys: Sequence[str],
    names: Sequence[str | None],
    strata: Sequence[str],
    count: int,
    seed: int = 0,
) -> np.ndarray:
    """The subset (0..count-1) of each input: every stratum dealt round-robin over the subsets,
    its members in content order shuffled by ``seed``."""
    if not len(keys) == len(names) == len(strata):
        raise ValueError("keys, names and strata must have one entry per image")
    canonical = canonical_order(keys, names)
    subsets = np.empty(len(keys), dtype=np.int64)
    dealt = 0
    for number, stratum in enumerate(sorted(set(strata))):
        members = np.array([i for i in canonical if strata[i] == stratum], dtype=np.int64)
        members = members[np.random.default_rng([seed, number]).permutation(len(members))]
        subsets[members] = (dealt + np.arange(len(members))) % count
        dealt += len(members)
    return subsets


def fit_subset_size(budget_bytes: float, image_bytes: int, pair_bytes: int) -> int:
    """The largest K whose scoring fits in its share of ``budget_bytes``: K images of
    ``image_bytes`` each (encoder outputs and expert maps) plus ``pair_bytes`` for each of the
    K x K pairs (the MSM table)."""
    room = budget_bytes * _SCORING_SHARE
    if pair_bytes <= 0:
        return max(1, int(room // max(image_bytes, 1)))
    # K^2 * pair + K * image <= room, the positive root of the quadratic.
    root = (-image_bytes + math.sqrt(image_bytes**2 + 4 * pair_bytes * room)) / (2 * pair_bytes)
    return max(1, int(root))


def available_memory_bytes() -> int:
    """Memory this machine can give without swapping: MemAvailable on Linux, else free pages."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
