"""How small a set can be: image AUROC of MuSc and STAPS against the set size N, on real features.

    python benchmarks/set_size.py OUT WEIGHTS [DRAWS]     e.g. ... /tmp/size w.safetensors 40

WEIGHTS: a dinov2_vits14 file (`zsad weights from-onnx`, docs/backbones.md). The data is
`zsad make-data --seed 0` with 40 good test images per category (7 categories, 128 px), encoded
once at 224 px. For each N, DRAWS sets (default 8) per category are scored as sets, drawn two
ways: "one defect" (one defective image and N - 1 good ones) and "random" (N of the category's
test images, 40 good and 2 per defect type, so many small sets hold no defect at all). Two
figures per N: the mean AUROC within a set (how often a defect outranks a good part inside its
set; sets with both labels only) and the AUROC of all the draws' scores pooled (whether one
threshold separates defects across sets). Writes OUT/table.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from zsad.data.datasets import read_mvtec
from zsad.data.images import load_image
from zsad.data.synthetic import make_dataset
from zsad.evaluation.metrics import image_metrics
from zsad.formats.backbones import IMAGENET_MEAN, IMAGENET_STD
from zsad.model import TapEncoder, load_backbone
from zsad.runtime.preprocess import preprocess_batch
from zsad.scoring.pipeline import SetScoringConfig, score_set

SIZE = 224
SET_SIZES = (2, 3, 4, 5, 8, 16)
METHODS = {"musc": SetScoringConfig(method="musc"), "staps": SetScoringConfig(method="staps")}


def encode(encoder: TapEncoder, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(taps, cls) of the images at ``paths``."""
    pixels = preprocess_batch([load_image(p) for p in paths], SIZE, IMAGENET_MEAN, IMAGENET_STD)
    with torch.no_grad():
        outs = [encoder(torch.from_numpy(pixels[i : i + 16])) for i in range(0, len(pixels), 16)]
    return torch.cat([o.taps for o in outs]).numpy(), torch.cat([o.cls for o in outs]).numpy()


def main(out: Path, weights: Path, draws: int) -> None:
    """Score every draw; write OUT/table.md."""
    encoder = TapEncoder(load_backbone("dinov2_vits14", weights=weights), image_size=SIZE)
    root = out / "data"
    if not root.exists():
        make_dataset(root, seed=0, n_good=40, n_defect=2)
    samples = read_mvtec(root)
    rng = np.random.default_rng(0)
    # (draw, method, N) -> per-set AUROCs, and the pooled labels and scores
    within: dict[tuple[str, str, int], list[float]] = {}
    pooled: dict[tuple[str, str, int], tuple[list[int], list[float]]] = {}
    for category in sorted({s.category for s in samples}):
        chosen = [s for s in samples if s.category == category]
        labels = np.array([s.label for s in chosen])
        taps, cls = encode(encoder, [s.path for s in chosen])
        good, bad = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
        for n in SET_SIZES:
            for _ in range(draws):
                picks = {
                    "one defect": np.concatenate(
                        [rng.choice(bad, 1), rng.choice(good, n - 1, replace=False)]
                    ),
                    "random": rng.choice(len(chosen), n, replace=False),
                }
                for draw, pick in picks.items():
                    for name, config in METHODS.items():
                        scores = score_set(
                            taps[pick], cls[pick], config, image_size=SIZE
                        ).image_scores
                        if 0 < labels[pick].sum() < n:
                            auroc = image_metrics(labels[pick], scores)["auroc"]
                            within.setdefault((draw, name, n), []).append(auroc)
                        got = pooled.setdefault((draw, name, n), ([], []))
                        got[0].extend(labels[pick].tolist())
                        got[1].extend(scores.tolist())
        print(category, flush=True)
    lines = [
        "| sets | N | musc within a set | musc pooled | staps within a set | staps pooled |",
        "|---|---|---|---|---|---|",
    ]
    for draw in ("one defect", "random"):
        for n in SET_SIZES:
            cells = []
            for name in METHODS:
                labels, scores = (np.array(v) for v in pooled[(draw, name, n)])
                cells += [
                    f"{100 * np.mean(within.get((draw, name, n), [np.nan])):.1f}",
                    f"{100 * image_metrics(labels, scores)['auroc']:.1f}",
                ]
            lines.append(f"| {draw} | {n} | {' | '.join(cells)} |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 8)
