"""The memory table of docs/deployment.md, computed from the shapes (zsad.formats.memory).

    python benchmarks/memory_table.py           # print it
    python benchmarks/memory_table.py --write   # replace it in docs/deployment.md

Per backbone and input size: GPU and host memory of a stream with a bank of K and of a set of
N, and the largest of the listed sizes that fits each target. A GPU station runs the encoder
(float16, its weights and activations) and scoring (CuPy, float16 features) on the GPU; a CPU
station runs both in float32 on the host. tests/test_memory.py checks that the doc holds this
script's output.
"""

from __future__ import annotations

import sys
from pathlib import Path

from zsad.formats.backbones import ARCHITECTURES, VitArch
from zsad.formats.memory import (
    FP16,
    FP32,
    Footprint,
    ScoringShape,
    bank_footprint,
    encoder_footprint,
    set_footprint,
    total,
    vit_parameters,
)
from zsad.formats.methods import DEFAULT_R_LIST

DOC = Path(__file__).resolve().parents[1] / "docs" / "deployment.md"
BEGIN, END = "<!-- memory table: benchmarks/memory_table.py -->", "<!-- end of memory table -->"
SIZES = (16, 32, 64, 200)
BACKBONES = (
    ("ViT-S/14", "dinov2_vits14", (224, 336, 518)),
    ("ViT-B/16", "dino_vitb16", (224, 336, 512)),
    ("ViT-L/14", "dinov2_vitl14", (224, 336, 518)),
)
TAPS = 4  # the default taps: blocks at the quarter points
# Images the encoder holds at once: a stream encodes each arriving image, a set in batches.
BATCH = {"bank": 1, "set": 4}
GB = 2**30
# What each target leaves to zsad: a card less its CUDA context and libraries; an Orin module
# (memory shared by CPU and GPU) less JetPack, the CUDA context, Python and the libraries.
CUDA_CONTEXT = 0.5 * GB
JETPACK = 2.5 * GB
TARGETS = {
    "8 GB card": (8 * GB - CUDA_CONTEXT, False),
    "12 GB card": (12 * GB - CUDA_CONTEXT, False),
    "24 GB card": (24 * GB - CUDA_CONTEXT, False),
    "Orin 8 GB": (8 * GB - JETPACK, True),
    "Orin 16 GB": (16 * GB - JETPACK, True),
}


def footprint(arch: VitArch, image_size: int, mode: str, size: int, gpu: bool) -> Footprint:
    """A station's memory for a bank (``mode`` "bank") or set of ``size`` images."""
    tokens = 1 + (image_size // arch.patch_size) ** 2
    shape = ScoringShape(TAPS, tokens, arch.width, TAPS * len(DEFAULT_R_LIST), arch.width)
    weights = vit_parameters(arch) * (FP16 if gpu else FP32)
    encoder = encoder_footprint(weights, arch.width, tokens, BATCH[mode], gpu)
    scoring = (bank_footprint if mode == "bank" else set_footprint)(size, shape, gpu)
    return total(encoder, scoring)


def _fits(need: Footprint, room: float, shared: bool) -> bool:
    return (need.host + need.gpu if shared else need.gpu) <= room


def _row(label: str, arch: VitArch, image_size: int, mode: str) -> str:
    gpu = [footprint(arch, image_size, mode, k, gpu=True) for k in SIZES]
    host = [footprint(arch, image_size, mode, k, gpu=False).host for k in SIZES]
    largest = []
    for room, shared in TARGETS.values():
        fitting = [k for k, need in zip(SIZES, gpu, strict=True) if _fits(need, room, shared)]
        largest.append(str(fitting[-1]) if fitting else "none")
    cells = [
        label,
        str(image_size),
        " / ".join(f"{need.gpu / GB:.1f}" for need in gpu),
        " / ".join(f"{need / GB:.1f}" for need in host),
        *largest,
    ]
    return "| " + " | ".join(cells) + " |"


def render() -> str:
    """Both tables (bank of K, set of N) as markdown, between the doc's markers."""
    sizes = " / ".join(map(str, SIZES))
    parts = [BEGIN]
    for mode, name in (("bank", "K"), ("set", "N")):
        title = "a stream with a bank of K" if mode == "bank" else "a set of N"
        parts += [
            "",
            f"Memory of {title}, {name} = {sizes} (GB), and the largest of these {name} that fits:",
            "",
            "| backbone | px | GPU station: GPU | CPU station: host | "
            + " | ".join(TARGETS)
            + " |",
            "|---" * (4 + len(TARGETS)) + "|",
        ]
        for label, name_, image_sizes in BACKBONES:
            arch = ARCHITECTURES[name_]
            parts += [_row(label, arch, size, mode) for size in image_sizes]
    parts += ["", END]
    return "\n".join(parts)


def main() -> None:
    """Print the tables, or with --write put them in docs/deployment.md."""
    table = render()
    if "--write" not in sys.argv[1:]:
        print(table)
        return
    doc = DOC.read_text()
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(head + table + tail)


if __name__ == "__main__":
    main()
