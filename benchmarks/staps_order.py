"""How the order of the images moves STAPS's image scores, against MuSc, on real features.

    python benchmarks/staps_order.py OUT WEIGHTS [SEEDS]     e.g. ... /tmp/order w.safetensors 0,1,2

WEIGHTS: a dinov2_vits14 file (`zsad weights from-onnx`, docs/backbones.md); SEEDS: data seeds
(default 0,1,2). For each seed, two generated sets (`zsad make-data`, 7 categories, 128 px):
"benchmark" at the generator's defaults (8 good and 4 per defect type: most images defective,
listed folder by folder as benchmark datasets are) and "production" (40 good, 1 per defect
type: a few defects among many good parts). Each category is encoded once (224 px) and its
MSM expert maps computed once; then each variant scores it in the listed order and in 5 random
orders (seeds 100-104; on the production set a random order scatters the defects as a line
does). Writes OUT/rows.json (one row per seed, set and category) and OUT/table.md: image AUROC
per variant and order, the mean over categories, then mean +- SD over the data seeds (for the
random orders, of each seed's mean over the 5 orders, with the range of the order means); and
the pixel AUROC of each map fusion in the listed order and in one random order, over all sets.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from zsad.data.datasets import read_mvtec
from zsad.data.images import load_image, load_mask
from zsad.data.synthetic import make_dataset
from zsad.evaluation.metrics import image_metrics, pixel_metrics
from zsad.formats.backbones import IMAGENET_MEAN, IMAGENET_STD
from zsad.model import TapEncoder, load_backbone
from zsad.runtime.preprocess import preprocess_batch
from zsad.scoring.maps import upsample_maps
from zsad.scoring.pipeline import SetScoringConfig, expert_maps, score_experts

SIZE = 224
SETS = {"benchmark": {}, "production": {"n_good": 40, "n_defect": 1}}
ORDER_SEEDS = range(100, 105)
STAPS = SetScoringConfig(method="staps", order="input")
VARIANTS = {
    "musc": SetScoringConfig(method="musc"),
    "staps": STAPS,
    "staps --beta 0": replace(STAPS, beta=0.0),
    "staps --no-bgmps": replace(STAPS, use_bgmps=False),
    "staps --no-stas": replace(STAPS, use_stas=False),
    "staps --no-stas --embed svd": replace(STAPS, use_stas=False, embed="svd"),
}
# The map fusions compared at pixel level: mean of the maps, BGMPS with each embedding.
PIXEL_VARIANTS = ("musc", "staps", "staps --no-stas --embed svd")


def encode(encoder: TapEncoder, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(taps, cls) of the images at ``paths``."""
    pixels = preprocess_batch([load_image(p) for p in paths], SIZE, IMAGENET_MEAN, IMAGENET_STD)
    with torch.no_grad():
        outs = [encoder(torch.from_numpy(pixels[i : i + 16])) for i in range(0, len(pixels), 16)]
    return torch.cat([o.taps for o in outs]).numpy(), torch.cat([o.cls for o in outs]).numpy()


def score_category(encoder: TapEncoder, samples: list) -> dict[str, float]:
    """Image AUROC of every variant in every order, and the pixel AUROC of both map fusions."""
    labels = np.array([s.label for s in samples])
    taps, cls = encode(encoder, [s.path for s in samples])
    experts = expert_maps(taps, STAPS)
    blank = np.zeros((SIZE, SIZE), bool)
    masks = np.stack(
        [blank if s.mask_path is None else load_mask(s.mask_path, (SIZE, SIZE)) for s in samples]
    )
    row: dict[str, float] = {}
    orders = {"listed": np.arange(len(samples))}
    n = len(samples)
    orders |= {f"random{k}": np.random.default_rng(k).permutation(n) for k in ORDER_SEEDS}
    for name, config in VARIANTS.items():
        for order_name, order in orders.items():
            # The order is the sequence STAS sees: score the permuted set in input order.
            result = score_experts(experts[:, order], cls[order], config, image_size=SIZE)
            row[f"{name}|{order_name}"] = image_metrics(labels[order], result.image_scores)["auroc"]
            if order_name in ("listed", "random100") and name in PIXEL_VARIANTS:
                pixels = upsample_maps(result.patch_maps, SIZE)
                auroc = pixel_metrics(masks[order], pixels)["auroc"]
                row[f"pixel {name}|{order_name}"] = auroc
    return row


def table(rows: list[dict]) -> str:
    """The markdown table of OUT/table.md."""
    lines = [
        "| set | variant | listed order | random order (5 orders) | order range |",
        "|---|---|---|---|---|",
    ]
    seeds = sorted({r["seed"] for r in rows})
    for set_name in SETS:
        for name in VARIANTS:

            def per_seed(key: str, set_name: str = set_name) -> list[float]:
                return [
                    np.mean([r[key] for r in rows if r["set"] == set_name and r["seed"] == s])
                    for s in seeds
                ]

            listed = per_seed(f"{name}|listed")
            randoms = [per_seed(f"{name}|random{k}") for k in ORDER_SEEDS]
            per_seed_random = np.mean(randoms, axis=0)
            order_means = [np.mean(r) for r in randoms]
            lines.append(
                f"| {set_name} | {name} | {100 * np.mean(listed):.1f} +- {100 * np.std(listed):.1f}"
                f" | {100 * np.mean(per_seed_random):.1f} +- {100 * np.std(per_seed_random):.1f}"
                f" | {100 * min(order_means):.1f}-{100 * max(order_means):.1f} |"
            )
    lines.append("\n| maps | pixel AUROC, listed order | pixel AUROC, a random order |")
    lines.append("|---|---|---|")
    for name in PIXEL_VARIANTS:
        cells = [
            100 * np.mean([r[f"pixel {name}|{o}"] for r in rows]) for o in ("listed", "random100")
        ]
        lines.append(f"| {name} | {cells[0]:.1f} | {cells[1]:.1f} |")
    return "\n".join(lines) + "\n"


def main(out: Path, weights: Path, seeds: list[int]) -> None:
    """Run every seed, set and category; write OUT/rows.json and OUT/table.md."""
    encoder = TapEncoder(load_backbone("dinov2_vits14", weights=weights), image_size=SIZE)
    rows = []
    for seed in seeds:
        for set_name, sizes in SETS.items():
            root = out / f"data-{set_name}-{seed}"
            if not root.exists():
                make_dataset(root, seed=seed, **sizes)
            samples = read_mvtec(root)
            for category in sorted({s.category for s in samples}):
                chosen = [s for s in samples if s.category == category]
                row = score_category(encoder, chosen)
                rows.append({"seed": seed, "set": set_name, "category": category, **row})
                print(seed, set_name, category, flush=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    (out / "table.md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    chosen = [int(s) for s in sys.argv[3].split(",")] if len(sys.argv) > 3 else [0, 1, 2]
    main(Path(sys.argv[1]), Path(sys.argv[2]), chosen)
