"""Which images a set scores together: the content keys of a set and its split into subsets."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from zsad.api.stream import image_label
from zsad.data.identity import content_key
from zsad.data.images import ImageInput
from zsad.errors import ZsadError
from zsad.scoring.subsets import (
    MIN_SET_SIZE,
    available_memory_bytes,
    canonical_order,
    fit_subset_size,
    split_subsets,
    subset_count,
)

# (bytes per image, bytes per pair of images) of scoring a set, or None if nothing decodes.
Footprint = Callable[[Sequence[int]], tuple[int, int] | None]


@dataclass(frozen=True)
class SubsetRequest:
    """How to split a set: ``divide`` subsets, or of about ``size`` images, else fitted to
    ``memory_gb`` (None: the memory available when the run starts)."""

    size: int | None = None
    divide: int | None = None
    memory_gb: float | None = None


@dataclass(frozen=True)
class SetPlan:
    """A set's content keys and the subset of each image; ``size`` is the subset size asked
    for or fitted to memory (None: the set is scored whole)."""

    keys: tuple[str, ...]
    names: tuple[str | None, ...]
    subsets: tuple[int, ...]
    count: int
    size: int | None = None

    def members(self, subset: int, in_input_order: bool = False) -> list[int]:
        """The input positions of a subset's images, in content order (or input order)."""
        return (self._input_groups if in_input_order else self._content_groups)[subset]

    # Grouped once per plan: a scan of the whole set per subset made a run quadratic in N.
    @cached_property
    def _content_groups(self) -> list[list[int]]:
        return self._group(self.canonical())

    @cached_property
    def _input_groups(self) -> list[list[int]]:
        return self._group(np.arange(len(self.keys)))

    def _group(self, order: np.ndarray) -> list[list[int]]:
        """Each subset's input positions, in ``order``."""
        groups: list[list[int]] = [[] for _ in range(self.count)]
        for i in order.tolist():
            groups[self.subsets[i]].append(i)
        return groups

    def canonical(self) -> np.ndarray:
        """Every input position in content order."""
        return canonical_order(self.keys, self.names)


def folder_strata(images: Sequence[ImageInput]) -> list[str]:
    """Each image's folder (pixels given in Python: one stratum of their own)."""
    return [
        str(Path(image).parent) if isinstance(image, (str, os.PathLike)) else "" for image in images
    ]


def plan_set(
    images: Sequence[ImageInput],
    footprint: Footprint,
    *,
    subset_size: int | None = None,
    divide: int | None = None,
    strata: Sequence[str] | None = None,
    memory_gb: float | None = None,
    seed: int = 0,
) -> SetPlan:
    """Split ``images`` into subsets: ``divide`` of them, else of about ``subset_size``, else
    as large as fit ``memory_gb`` (None: the memory available now); stratified by ``strata``
    (default: each image's folder)."""
    if subset_size is not None and divide is not None:
        raise ZsadError("give a subset size or a number of subsets (--divide), not both")
    if memory_gb is not None and memory_gb <= 0:
        raise ZsadError(f"--memory-gb {memory_gb}: must be positive")
    if strata is not None and len(strata) != len(images):
        raise ZsadError(f"{len(strata)} strata for {len(images)} images: give one per image")
    keys = tuple(content_key(image) for image in images)
    names = tuple(image_label(image) for image in images)
    n = len(images)
    size = subset_size
    if size is None and divide is None and n >= 2 * MIN_SET_SIZE:
        size = _fitted_size(footprint, canonical_order(keys, names), memory_gb, n)
    try:
        count = subset_count(n, size, divide)
    except ValueError as exc:
        raise ZsadError(f"subsets: {exc}") from exc
    chosen = folder_strata(images) if strata is None else list(strata)
    subsets = split_subsets(keys, names, chosen, count, seed)
    return SetPlan(keys, names, tuple(int(s) for s in subsets), count, size)


def plan_groups(
    images: Sequence[ImageInput],
    groups: Sequence[str],
    plan: Callable[[list[ImageInput]], SetPlan],
) -> SetPlan:
    """One plan for images in groups: ``plan`` splits each group on its own (groups in name
    order), its subsets numbered on from the previous group's, so no subset mixes groups."""
    if len(groups) != len(images):
        raise ZsadError(f"{len(groups)} groups for {len(images)} images: give one per image")
    keys: list[str] = [""] * len(images)
    names: list[str | None] = [None] * len(images)
    subsets = [0] * len(images)
    count, sizes = 0, []
    by_group: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        by_group.setdefault(group, []).append(i)
    for _, members in sorted(by_group.items()):
        part = plan([images[i] for i in members])
        for k, i in enumerate(members):
            keys[i], names[i], subsets[i] = part.keys[k], part.names[k], count + part.subsets[k]
        count += part.count
        sizes += [] if part.size is None else [part.size]
    return SetPlan(tuple(keys), tuple(names), tuple(subsets), count, max(sizes, default=None))


def _fitted_size(
    footprint: Footprint, canonical: np.ndarray, memory_gb: float | None, n: int
) -> int | None:
    """The subset size that fits the memory budget, or None when the whole set fits."""
    sizes = footprint([int(i) for i in canonical])
    if sizes is None:
        return None
    budget = available_memory_bytes() if memory_gb is None else memory_gb * 2**30
    fitted = fit_subset_size(budget, *sizes)
    return None if fitted >= n else fitted
