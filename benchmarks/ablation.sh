#!/usr/bin/env bash
# The ablation table of docs/methods.md: `zsad eval` on generated data, one row per flag set,
# each STAS row with both readings of the semantic matrix (--stas-semantic rescale | clip).
#
#   benchmarks/ablation.sh OUT        e.g. benchmarks/ablation.sh /tmp/zsad-ablation
#
# Data: `zsad make-data --seed 0 --categories grid,fabric,wood,disc` (4 categories x 20 test
# images); encoder: the real DINOv2 ViT-S/14 (benchmarks/real_weights.sh) at 224 px, on the CPU.
# Sets are scored in a seeded random order (the default --order shuffle). Writes
# OUT/RUN/metrics.json per run and OUT/table.md.
set -euo pipefail

out=${1:?usage: benchmarks/ablation.sh OUT}
mkdir -p "$out"
data=$out/data
[ -d "$data" ] || zsad make-data "$data" --seed 0 --categories grid,fabric,wood,disc >/dev/null
# shellcheck source=benchmarks/real_weights.sh
. "$(dirname "$0")/real_weights.sh"
weights=$(real_weights "$out")

runs=(
  "musc|--method musc"
  "staps|--method staps"
  "beta0|--method staps --beta 0"
  "nostas|--method staps --no-stas"
  "nobgmps|--method staps --no-bgmps"
  "svd|--method staps --embed svd"
  "kmeans|--method staps --cluster kmeans"
  "seed1|--method staps --seed 1"
)
for run in "${runs[@]}"; do
  name=${run%%|*}
  flags=${run#*|}
  variants=(rescale clip)
  case $name in musc | nostas) variants=(rescale) ;; esac # RsCIN: no STAS semantic matrix
  for semantic in "${variants[@]}"; do
    dir=$out/$name-$semantic
    [ -f "$dir/metrics.json" ] && continue
    # shellcheck disable=SC2086
    zsad eval "$data" $flags --stas-semantic "$semantic" --model dinov2_vits14 --weights "$weights" \
      --image-size 224 \
      --device cpu --no-overlays --no-progress --out "$dir" >/dev/null
  done
done

python - "$out" "${runs[@]}" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
keys = (("image", "auroc"), ("image", "ap"), ("pixel", "auroc"), ("pixel", "aupro"))
lines = [
    "| run | STAS semantic | image AUROC | image AP | pixel AUROC | pixel AUPRO |",
    "|---|---|---|---|---|---|",
]
for run in sys.argv[2:]:
    name, flags = run.split("|", 1)
    for semantic in ("rescale", "clip"):
        path = out / f"{name}-{semantic}" / "metrics.json"
        if not path.is_file():
            continue
        mean = json.loads(path.read_text())["mean"]
        shown = semantic if json.loads(path.read_text())["settings"]["use_stas"] and "musc" not in flags else "none (RsCIN)"
        cells = " | ".join(f"{100 * mean[a][b]:.1f}" for a, b in keys)
        lines.append(f"| `{flags}` | {shown} | {cells} |")
(out / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
