"""STAS on a stream: image AUROC of defects scattered among good parts, per scoring setting.

    python benchmarks/stream_stas.py [WEIGHTS]     # prints the table of docs/station.md

WEIGHTS: a dinov2_vits14 file (`zsad weights from-onnx`, docs/backbones.md), scored at 224 px;
without it zsad-tiny (random weights). Per category and data seed (0, 1, 2): 60 frames
rendered at 128 px, 5 of them defective at random positions (one per defect type in turn), as
parts come down a line. They are scored in arrival order against a rolling bank of K = 8, on
the CPU; each frame is encoded once and its outputs are fed to every setting. Cells: image
AUROC, mean +- SD over the 3 seeds.
"""

from __future__ import annotations

import sys

import numpy as np

from zsad import Detector
from zsad.api.scorers import MethodOptions
from zsad.data.synthetic import DEFECT_TYPES, render_sample
from zsad.evaluation.metrics import image_metrics
from zsad.scoring.pipeline import SetScoringConfig

FRAMES, DEFECTS, BANK, SEEDS = 60, 5, 8, (0, 1, 2)
CATEGORIES = tuple(sorted(DEFECT_TYPES))
SETTINGS = {
    "musc (the default)": ("musc", {}),
    "`staps` (STAS, β = 0.5: the paper's)": ("staps", {}),
    "`staps --beta 0`": ("staps", {"beta": 0.0}),
    "`staps --stas-semantic clip`": ("staps", {"stas_semantic": "clip"}),
}


def frames(category: str, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The category's frames in arrival order and their 0/1 labels."""
    rng = np.random.default_rng(seed)
    kinds = DEFECT_TYPES[category]
    defective = set(rng.choice(FRAMES, DEFECTS, replace=False).tolist())
    images, labels = [], []
    for i in range(FRAMES):
        defect = kinds[sum(labels) % len(kinds)] if i in defective else None
        images.append(render_sample(category, rng, 128, defect)[0])
        labels.append(int(defect is not None))
    return images, np.array(labels)


def stream_auroc(detector: Detector, outputs: list[dict], labels: np.ndarray) -> float:
    """Image AUROC of one scoring setting over pre-encoded frames."""
    scorer = detector.stream(bank=BANK).scorer
    scores: dict[int, float] = {}
    for position, output in enumerate(outputs):
        scores.update((s.position, s.score) for s in scorer.add(output, position))
    scores.update((s.position, s.score) for s in scorer.flush())
    return image_metrics(labels, np.array([scores[i] for i in range(len(outputs))]))["auroc"]


def main(weights: str | None) -> None:
    """Print the markdown table."""
    if weights is None:
        encoder = Detector.from_model("zsad-tiny", image_size=224, device="cpu")
    else:
        encoder = Detector.from_model(
            "dinov2_vits14", weights=weights, image_size=224, device="cpu"
        )
    print("| category | " + " | ".join(SETTINGS) + " |")
    print("|---" * (len(SETTINGS) + 1) + "|")
    table = np.empty((len(CATEGORIES), len(SETTINGS), len(SEEDS)))
    with encoder:
        for c, category in enumerate(CATEGORIES):
            for s, seed in enumerate(SEEDS):
                images, labels = frames(category, seed)
                outputs = [encoder.encode_one(image) for image in images]
                for k, (method, settings) in enumerate(SETTINGS.values()):
                    options = MethodOptions(SetScoringConfig(method=method, **settings))
                    detector = Detector(method, encoder.backend, options=options)
                    table[c, k, s] = stream_auroc(detector, outputs, labels)
            cells = [f"{100 * v.mean():.1f} ± {100 * v.std():.1f}" for v in table[c]]
            print(f"| {category} | " + " | ".join(cells) + " |", flush=True)
    means = table.mean(axis=0)  # (settings, seeds): each seed's mean over categories
    cells = [f"{100 * v.mean():.1f} ± {100 * v.std():.1f}" for v in means]
    print("| mean | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
