"""Score images with an exported bundle, torch-free: a set, then the same images as a stream.

zsad export --model zsad-tiny --image-size 224 --out bundles/tiny   # once, with the export extra
zsad make-data data                                                 # or your own images
python examples/detect_bundle.py bundles/tiny data/wood/test
"""

from __future__ import annotations

import sys
from pathlib import Path

import zsad

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def main(bundle: str, folder: str, bank: int = 8) -> None:
    """Print the most anomalous images of the set, then score them one by one as a station."""
    root = Path(folder)
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)

    def shown(path: str | Path) -> Path:
        # Relative to the folder, not the base name: good/000.png and crack/000.png differ.
        return Path(path).relative_to(root)

    with zsad.Detector.from_bundle(bundle, device="auto") as det:
        print(f"{det} on {len(paths)} images")
        if det.method.per_image:  # HeadCLIP: every image on its own
            for path in paths:
                result = det.predict(path)
                print(f"{shown(path)}: {result.score:.4f} {result.decision or ''}")
            return
        scored = det.score_set(paths)
        for result in sorted(scored.scored, key=lambda r: -r.score)[:5]:
            print(f"set    {shown(result.path)}: {result.score:.4f}")
        stream = det.stream(bank=bank)
        for path in paths:
            for result in stream.add(path):  # nothing until the bank is full, then one each
                print(f"stream #{result.index} {shown(result.path)}: {result.score:.4f}")
        print(f"{len(stream.flush())} held images left at the end")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
