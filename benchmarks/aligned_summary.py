"""Mean and spread over data seeds of the aligned-MSM detection runs of benchmarks/aligned.sh.

    python benchmarks/aligned_summary.py OUT

reads OUT/eval-RUN (seed 0) and OUT/seeds/sS/eval-RUN (further seeds), RUN in global, w1, w2,
w3 (and raw-global, raw-w1, ... where present: MSM maps without STAS), and writes OUT/seeds.md:
per category and run the mean and standard deviation over the seeds of image AUROC, pixel
AUROC and pixel AP, and of each defect type's image AUROC against the good images; and each
window's image AUROC minus global MSM's on the same seed.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

RUNS = ("global", "w1", "w2", "w3", "raw-global", "raw-w1", "raw-w2", "raw-w3")


def defect_aurocs(results: Path) -> dict[str, float]:
    """Image AUROC of each defect type against the good images, from a results.jsonl."""
    from zsad.evaluation.metrics import image_metrics

    by_kind: dict[str, list[float]] = defaultdict(list)
    for line in results.read_text().splitlines():
        record = json.loads(line)
        by_kind[Path(record["path"]).parent.name].append(record["score"])
    good = by_kind.pop("good", [])
    out = {}
    for kind, scores in sorted(by_kind.items()):
        labels = np.r_[np.zeros(len(good)), np.ones(len(scores))]
        out[kind] = image_metrics(labels, np.r_[good, scores])["auroc"]
    return out


def collect(out: Path) -> dict[tuple[str, str, str], list[float]]:
    """(category, run, metric) -> one value per seed, for every run folder found."""
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    roots = [out] + sorted((out / "seeds").glob("s*"))
    for root in roots:
        for run in RUNS:
            metrics_file = root / f"eval-{run}" / "metrics.json"
            if not metrics_file.is_file():
                continue
            metrics = json.loads(metrics_file.read_text())
            for category, entry in metrics["categories"].items():
                if not (out / "seeds" / "s1" / f"eval-{run}" / category).is_dir():
                    continue  # a category the further seeds do not run
                values[category, run, "image AUROC"].append(entry["image"]["auroc"])
                values[category, run, "pixel AUROC"].append(entry["pixel"]["auroc"])
                values[category, run, "pixel AP"].append(entry["pixel"]["ap"])
                results = metrics_file.parent / category / "results.jsonl"
                for kind, auroc in defect_aurocs(results).items():
                    values[category, run, f"image AUROC {kind}"].append(auroc)
    return values


def table(values: dict[tuple[str, str, str], list[float]]) -> str:
    """Markdown: one row per (category, metric), one column per run, mean ± SD in percent."""
    runs = [r for r in RUNS if any(key[1] == r for key in values)]
    first = ("image AUROC", "pixel AUROC", "pixel AP")
    rank = {metric: i for i, metric in enumerate(first)}
    rows = sorted(
        {(c, m) for c, _, m in values}, key=lambda cm: (cm[0], rank.get(cm[1], len(first)), cm[1])
    )
    seeds = {len(v) for v in values.values()}
    lines = [
        f"Mean ± standard deviation over {', '.join(map(str, sorted(seeds)))} data seeds.",
        "",
        "| category | metric | " + " | ".join(runs) + " |",
        "|---|---|" + "---|" * len(runs),
    ]
    for category, metric in rows:
        cells = []
        for run in runs:
            got = values.get((category, run, metric))
            cells.append("-" if not got else f"{100 * np.mean(got):.1f} ± {100 * np.std(got):.1f}")
        lines.append(f"| {category} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired(values: dict[tuple[str, str, str], list[float]]) -> str:
    """Markdown: image AUROC of each window minus the global run's on the same seed (with STAS
    and without), mean ± SD in points: the seeds' shared difficulty cancels out."""
    lines = [
        "",
        "Image AUROC of each window minus global MSM's on the same data, in points:",
        "",
        "| category | scoring | w1 | w2 | w3 |",
        "|---|---|---|---|---|",
    ]
    for category in sorted({c for c, _, _ in values}):
        for prefix, name in (("", "STAS (default)"), ("raw-", "without STAS")):
            base = values.get((category, f"{prefix}global", "image AUROC"))
            cells = []
            for w in ("w1", "w2", "w3"):
                got = values.get((category, f"{prefix}{w}", "image AUROC"))
                if not base or not got or len(got) != len(base):
                    cells.append("-")
                    continue
                delta = 100 * (np.asarray(got) - np.asarray(base))
                cells.append(f"{delta.mean():+.1f} ± {delta.std():.1f}")
            lines.append(f"| {category} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Write OUT/seeds.md from the runs under OUT."""
    if len(sys.argv) != 2:
        raise SystemExit("usage: python benchmarks/aligned_summary.py OUT")
    out = Path(sys.argv[1])
    values = collect(out)
    text = table(values) + paired(values)
    (out / "seeds.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
