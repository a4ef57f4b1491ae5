"""MuSc's RsCIN on DINO features: cosine neighbours (zsad) against plain dot products (MuSc).

    python benchmarks/dino_rscin.py DATA WEIGHTS [SIZE]

DATA: an MVTec-layout folder (`zsad make-data DATA --seed 0`); WEIGHTS: a dinov2_vits14 file
(`zsad weights from-onnx`, see docs/backbones.md); SIZE: input pixels (224). Scores each
category with MuSc's maps, then prints image AUROC per category and their mean for the raw
scores (the maximum of the upsampled map), RsCIN over CLS cosines (zsad's image scores) and
RsCIN over dot products of the unnormalised final-normed CLS tokens (MuSc's code for DINO).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from zsad.data.datasets import read_mvtec
from zsad.data.images import load_image
from zsad.evaluation.metrics import image_metrics
from zsad.formats.backbones import IMAGENET_MEAN, IMAGENET_STD
from zsad.model import TapEncoder, load_backbone
from zsad.runtime.preprocess import preprocess_batch
from zsad.scoring.pipeline import SetScoringConfig, score_set
from zsad.scoring.stas import propagate, rscin

K_LIST = (1, 2, 3)  # MuSc's RsCIN neighbour counts for MVTec AD


def features(encoder: TapEncoder, pixels: np.ndarray) -> tuple[np.ndarray, ...]:
    """(taps, unit CLS, unnormalised final-normed CLS) of a batch of pixels."""
    with torch.no_grad():
        x = torch.from_numpy(pixels)
        out = encoder(x)
        plain = encoder.norm(encoder.block_outputs(x)[:, -1, 0])
    return out.taps.numpy(), out.cls.numpy(), plain.numpy().astype(np.float64)


def main(data: Path, weights: Path, size: int) -> None:
    """Print the three image AUROCs per category and their means."""
    encoder = TapEncoder(load_backbone("dinov2_vits14", weights=weights), image_size=size)
    samples = read_mvtec(data)
    rows = {}
    for category in sorted({s.category for s in samples}):
        chosen = [s for s in samples if s.category == category]
        pixels = preprocess_batch(
            [load_image(s.path) for s in chosen], size, IMAGENET_MEAN, IMAGENET_STD
        )
        parts = [features(encoder, pixels[i : i + 8]) for i in range(0, len(pixels), 8)]
        taps, cls, plain = (np.concatenate(p) for p in zip(*parts, strict=True))
        raw = score_set(taps, cls, SetScoringConfig(method="musc"), image_size=size)
        raw = raw.raw_image_scores
        unit = (raw - raw.min()) / (raw.max() - raw.min())
        labels = np.array([s.label for s in chosen])
        variants = {
            "raw": raw,
            "cosine": rscin(raw, cls, K_LIST),
            "dot": propagate(unit, np.clip(plain @ plain.T, 0.0, None), K_LIST),
        }
        rows[category] = {k: image_metrics(labels, v)["auroc"] for k, v in variants.items()}
        print(category, {k: round(100 * v, 1) for k, v in rows[category].items()}, flush=True)
    means = {
        k: round(100 * float(np.mean([r[k] for r in rows.values()])), 1) for k in rows[category]
    }
    print("mean", means)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 224)
