#!/usr/bin/env bash
# Aligned MSM (--align-window) against global MSM, in one run, results under OUT:
#
#   benchmarks/aligned.sh OUT
#
# 1. OUT/scoring: `zsad bench scoring` at ViT-L shapes (P = 1369, C = 1024), sets of N = 10 and
#    20 and a bank of K = 32, global and aligned at w = 1, 2, 3, 5: time, fraction of a
#    same-FLOP matmul, peak memory (about 3 min on 2 CPU cores).
# 2. OUT/eval-global, OUT/eval-w1, -w2, -w3: image/pixel AUROC on the generated categories
#    (fixtured: bracket, chip; loose: loose_chip, the textures, disc), 30 good and 5 of each
#    defect type per category, with zsad-tiny at random weights, STAPS (about 3 min each).
#
# WINDOWS, N, BANK, EVAL_WINDOWS, GOOD and DEFECT change the shapes; THREADS sets
# OPENBLAS_NUM_THREADS (both MSM paths then use that many cores).
set -euo pipefail

out=${1:?usage: benchmarks/aligned.sh OUT}
windows=${WINDOWS:-1,2,3,5}
[ -n "${THREADS:-}" ] && export OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
mkdir -p "$out"

zsad bench scoring --out "$out/scoring" --n "${N:-10,20}" --bank "${BANK:-32}" --taps 0 \
  --max-baseline-mb 0 --align-window "$windows"

zsad make-data "$out/data" --seed 0 --n-train 0 --n-good "${GOOD:-30}" --n-defect "${DEFECT:-5}"
tiny=(--model zsad-tiny --pretrained random --image-size 224 --no-progress)
zsad eval "$out/data" "${tiny[@]}" --out "$out/eval-global"
for w in ${EVAL_WINDOWS:-1 2 3}; do
  zsad eval "$out/data" "${tiny[@]}" --align-window "$w" --out "$out/eval-w$w"
done
