"""Score a set of image files into a results folder: what `zsad infer` writes."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from zsad.api.detector import Detector
from zsad.api.journal import SetJournal
from zsad.api.records import write_set
from zsad.api.results import SetResult
from zsad.api.subsets import SetPlan, SubsetRequest, plan_groups
from zsad.errors import echo_stderr
from zsad.formats.atomic import write_json
from zsad.scoring.aligned import alignment_report

# Scores the subsets listed (``todo``) of a plan, yielding each one's SetResult in that order.
SubsetScoring = Callable[[Detector, Sequence[Path], SetPlan, list[int], int], Iterator[SetResult]]


def score_here(
    detector: Detector, paths: Sequence[Path], plan: SetPlan, todo: list[int], batch_size: int
) -> Iterator[SetResult]:
    """Score each subset of ``todo`` in this process, one after another."""
    for subset in todo:
        members = plan.members(subset, detector.time_is_input_order)
        yield detector.score_subset(paths, members, subset=subset, batch_size=batch_size)


def plan_run(
    detector: Detector,
    paths: Sequence[Path],
    subsets: SubsetRequest,
    groups: Sequence[str] | None = None,
) -> SetPlan:
    """How `zsad infer` splits ``paths``: ``detector.plan`` over the whole set, or over each
    group on its own (``groups``: one name per path)."""

    def plan(images: Sequence[Path]) -> SetPlan:
        return detector.plan(
            images, subset_size=subsets.size, divide=subsets.divide, memory_gb=subsets.memory_gb
        )

    return plan(paths) if groups is None else plan_groups(paths, groups, plan)


def infer_to_folder(
    detector: Detector,
    paths: Sequence[Path],
    out: Path,
    *,
    batch_size: int = 8,
    overlays: bool = True,
    subsets: SubsetRequest | None = None,
    groups: Sequence[str] | None = None,
    score: SubsetScoring = score_here,
    echo: Callable[[str], None] = echo_stderr,
) -> dict[str, Any]:
    """Score ``paths`` subset by subset into OUT/results.jsonl (a journal: a run of the same
    images and settings resumes after its last complete subset), maps, overlays (one colour
    scale per subset) and summary.json; returns the summary. ``groups`` (one name per path)
    keeps each group's images in subsets of their own; ``score`` scores the subsets (default:
    here, in turn)."""
    subsets = subsets or SubsetRequest()
    plan = plan_run(detector, paths, subsets, groups)
    run = {
        "paths": [str(p) for p in paths],
        "keys": list(plan.keys),
        "encoder": detector.source,
        "settings": detector.settings,
        "subset_size": subsets.size,
        "divide": subsets.divide,
        "overlays": overlays,
        # Only when grouped: a journal written before groups existed still resumes.
        **({} if groups is None else {"groups": list(groups)}),
    }
    infos: list[dict[str, Any]] = []
    timing = {"encode_s": 0.0, "score_s": 0.0}
    with SetJournal(out, run, list(plan.subsets)) as journal:
        plan = replace(plan, subsets=tuple(journal.subsets), count=max(journal.subsets) + 1)
        if journal.done:
            echo(
                f"zsad: resuming {journal.path}: {len(journal.done)} of {plan.count} "
                "subsets already scored"
            )
        todo = [subset for subset in range(plan.count) if subset not in journal.done]
        for part in score(detector, paths, plan, todo, batch_size):
            for failure in part.failures:
                echo(f"zsad: skipped {failure.error}")
            if "alignment" in part.info:
                echo(f"zsad: {alignment_report(part.info['alignment'])}")
            journal.append(
                write_set(
                    out,
                    part,
                    paths,
                    overlays=overlays,
                    progress=detector.progress,
                    first_id=journal.count,
                )
            )
            infos.append(part.info)
            timing = {k: round(v + part.timing[k], 3) for k, v in timing.items()}
        scored, failed, top = _ranking(journal.records())
    for note in detector.notes:
        echo(f"zsad: {note}")
    summary = {
        "images": len(paths),
        "scored": scored,
        "failed": failed,
        "subsets": plan.count,
        "subset_size": plan.size,
        "encoder": detector.source,
        "backend": detector.backend.name,
        "image_size": detector.image_size,
        "settings": detector.settings,
        "timing": timing,
        "most_anomalous": [{"path": r["path"], "score": r["score"]} for r in top],
        "info": infos[0] if len(infos) == 1 else {"parts": infos},
        **({} if groups is None else {"groups": _group_subsets(groups, plan)}),
    }
    write_json(out / "summary.json", summary)
    return summary


def _ranking(records: Iterable[dict[str, Any]]) -> tuple[int, int, list[dict[str, Any]]]:
    """(scored, failed, the ten highest-scored, ties in record order) of records read once:
    a summary of a set of any size holds ten records, never all of them."""
    counts = Counter[bool]()

    def scored() -> Iterator[dict[str, Any]]:
        for record in records:
            counts[record["error"] is None] += 1
            if record["error"] is None:
                yield record

    top = heapq.nlargest(10, scored(), key=lambda record: record["score"])
    return counts[True], counts[False], top


def _group_subsets(groups: Sequence[str], plan: SetPlan) -> dict[str, list[int]]:
    """Each group's subsets, for summary.json: records name their subset, not their group."""
    found: dict[str, set[int]] = {}
    for group, subset in zip(groups, plan.subsets, strict=True):
        found.setdefault(group, set()).add(subset)
    return {group: sorted(found[group]) for group in sorted(found)}
