"""The tables of docs/backbones.md from the runs of benchmarks/backbones.sh.

    python benchmarks/backbones_summary.py OUT

reads OUT/eval/RUN/metrics.json (RUN: METHOD-MODEL-SIZE) and OUT/encoder/MODEL-SIZE/bench.json
and writes OUT/table.md: per method and category, image AUROC / pixel AUROC / AUPRO of each run;
then per backbone and input size, the encoder's time per image and what it costs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from zsad.formats.backbones import get_arch

COLUMNS = (("tiny-224", "zsad-tiny, 224 px"), ("vits14-224", "ViT-S/14, 224 px"),
           ("vits14-518", "ViT-S/14, 518 px"))  # fmt: skip


def detection(out: Path, method: str) -> list[str]:
    """One markdown table: a row per category (and the mean), a column per run."""
    runs = {}
    for key, _ in COLUMNS:
        path = out / "eval" / f"{method}-{key}" / "metrics.json"
        if path.is_file():
            runs[key] = json.loads(path.read_text())
    shown = [(key, label) for key, label in COLUMNS if key in runs]
    lines = [
        "| category | " + " | ".join(label for _, label in shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    categories = sorted(next(iter(runs.values()))["categories"]) if runs else []
    for category in [*categories, "mean"]:
        cells = []
        for key, _ in shown:
            m = runs[key]
            entry = m["mean"] if category == "mean" else m["categories"][category]
            cells.append(
                f"{100 * entry['image']['auroc']:.1f} / {100 * entry['pixel']['auroc']:.1f} / "
                f"{100 * entry['pixel']['aupro']:.1f}"
            )
        name = "**mean**" if category == "mean" else category
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def encoders(out: Path) -> list[str]:
    """One markdown table: a row per backbone and input size."""
    lines = [
        "| backbone | input px | patches | GFLOP / image | p50 ms / image | images/s | peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted((out / "encoder").glob("*/bench.json")):
        bench = json.loads(path.read_text())
        config, row = bench["config"], bench["rows"][0]
        size = int(config["image_size"])
        arch = get_arch(config["model"])
        patch = arch.patch_size if arch else int(config["model"].split("-")[2])  # ViT-L-14-336
        lines.append(
            f"| {config['model']} | {size} | {(size // patch) ** 2} | "
            f"{row['gflop_per_image']:.0f} | {row['p50_ms']:.0f} | {row['images_per_s']:.2f} | "
            f"{row['peak_memory_mb']:.0f} |"
        )
    return lines


def main(out: Path) -> None:
    """Write OUT/table.md."""
    text = []
    for method in ("staps", "musc"):
        heading = f"### {method}: image AUROC / pixel AUROC / AUPRO"
        text += [heading, "", *detection(out, method), ""]
    text += ["### Encoder time per image (torch FP32, batch 1)", "", *encoders(out), ""]
    (out / "table.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
