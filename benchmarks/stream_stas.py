"""STAS on a stream: image AUROC of planted defects with and without STAS, both semantic matrices.

    python benchmarks/stream_stas.py            # prints the table of docs/station.md

Per category: 44 frames rendered with seed 0 (128 px), a defect every 11th frame (frames 10, 21,
32, 43, one of each defect type), scored in arrival order against a rolling bank of K = 8 by
zsad-tiny (random weights) at 224 px on the CPU. Each frame is encoded once and its outputs
are fed to every scoring setting.
"""

from __future__ import annotations

import numpy as np

from zsad import Detector
from zsad.api.scorers import MethodOptions
from zsad.data.synthetic import DEFECT_TYPES, render_sample
from zsad.evaluation.metrics import image_metrics
from zsad.scoring.pipeline import SetScoringConfig

FRAMES, EVERY, BANK = 44, 11, 8
SETTINGS = {
    "default (no STAS)": {"use_stas": False},
    "`--stas --beta 0`": {"use_stas": True, "beta": 0.0},
    "`--stas --beta 0 --stas-semantic clip`": {
        "use_stas": True,
        "beta": 0.0,
        "stas_semantic": "clip",
    },
    "`--stas` (β = 0.5, the paper's)": {"use_stas": True},
    "`--stas --stas-semantic clip`": {"use_stas": True, "stas_semantic": "clip"},
}


def frames(category: str) -> tuple[list[np.ndarray], np.ndarray]:
    """The category's frames in arrival order and their 0/1 labels."""
    rng = np.random.default_rng(0)
    kinds = DEFECT_TYPES[category]
    images, labels = [], []
    for i in range(FRAMES):
        defect = kinds[sum(labels) % len(kinds)] if i % EVERY == EVERY - 1 else None
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


def main() -> None:
    """Print the markdown table."""
    print("| category | " + " | ".join(SETTINGS) + " |")
    print("|---" * (len(SETTINGS) + 1) + "|")
    with Detector.from_model("zsad-tiny", image_size=224, device="cpu") as encoder:
        for category in ("grid", "fabric", "wood", "disc"):
            images, labels = frames(category)
            outputs = [encoder.encode_one(image) for image in images]
            cells = []
            for settings in SETTINGS.values():
                scoring = SetScoringConfig(**settings)
                detector = Detector("staps", encoder.backend, options=MethodOptions(scoring))
                cells.append(f"{100 * stream_auroc(detector, outputs, labels):.1f}")
            print(f"| {category} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
