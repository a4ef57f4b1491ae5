"""Do MuSc/STAPS scores hold when a set's taps are kept in float16? Real features, generated data.

    python benchmarks/half_taps.py OUT WEIGHTS     e.g. ... /tmp/half w.safetensors

WEIGHTS: a dinov2_vits14 file (`zsad weights from-onnx`, docs/backbones.md). Each category of
`zsad make-data --seed 0` (7 categories, 128 px) is encoded once at 224 px and scored twice, from
the float32 taps and from the same taps rounded to float16; prints the largest image-score
difference and the image AUROC of both, per method, and writes them to OUT/table.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from set_size import SIZE, encode

from zsad.data.datasets import read_mvtec
from zsad.data.synthetic import make_dataset
from zsad.evaluation.metrics import image_metrics
from zsad.model import TapEncoder, load_backbone
from zsad.scoring.pipeline import SetScoringConfig, score_set

METHODS = {"musc": SetScoringConfig(method="musc"), "staps": SetScoringConfig(method="staps")}


def main(out: Path, weights: Path) -> None:
    """Score every category both ways; write OUT/table.md."""
    root = out / "data"
    if not root.exists():
        make_dataset(root, seed=0)
    samples = read_mvtec(root)
    encoder = TapEncoder(load_backbone("dinov2_vits14", weights=weights), image_size=SIZE)
    rows = []
    for category in sorted({s.category for s in samples}):
        chosen = [s for s in samples if s.category == category]
        labels = np.array([s.label for s in chosen])
        taps, cls = encode(encoder, [s.path for s in chosen])
        half = taps.astype(np.float16).astype(np.float32)
        for name, config in METHODS.items():
            full = score_set(taps, cls, config, image_size=SIZE).image_scores
            rounded = score_set(half, cls, config, image_size=SIZE).image_scores
            rows.append(
                (
                    category,
                    name,
                    float(np.abs(full - rounded).max()),
                    image_metrics(labels, full)["auroc"],
                    image_metrics(labels, rounded)["auroc"],
                )
            )
        print(category, flush=True)
    lines = [
        "| method | max image-score difference | image AUROC, float32 taps | float16 taps |",
        "|---|---|---|---|",
    ]
    for name in METHODS:
        mine = [r for r in rows if r[1] == name]
        lines.append(
            f"| {name} | {max(r[2] for r in mine):.2e} | {100 * np.mean([r[3] for r in mine]):.2f}"
            f" | {100 * np.mean([r[4] for r in mine]):.2f} |"
        )
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
