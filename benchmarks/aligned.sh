#!/usr/bin/env bash
# Aligned MSM (--align-window) against global MSM, in one run, results under OUT:
#
#   benchmarks/aligned.sh OUT
#
# 1. OUT/scoring: `zsad bench scoring` at ViT-L shapes (P = 1369, C = 1024), sets of N = 10 and
#    20 and a bank of K = 32, global and aligned at w = 1, 2, 3, 5: time, fraction of a
#    same-FLOP matmul, peak memory (about 1 min on 2 CPU cores).
# 2. OUT/eval-global, OUT/eval-w1, -w2, -w3: image/pixel AUROC on the generated categories
#    (fixtured: bracket, chip; loose: loose_chip, the textures, disc), 30 good and 5 of each
#    defect type per category, with zsad-tiny at random weights, STAPS (about 1 min each).
# 3. The fixtured categories again on further data seeds (SEEDS, default 1-5; OUT/seeds/sS/),
#    and on every seed also without STAS (eval-raw-*: --no-stas --rscin-k 1, the image score
#    is then the maximum of the MSM map); OUT/seeds.md holds the mean and spread over the seeds
#    (benchmarks/aligned_summary.py). A category's image AUROC from ~50 images moves by several
#    points from one data seed to the next (about 8 minutes).
#
# WINDOWS, N, BANK, EVAL_WINDOWS, GOOD, DEFECT and SEEDS change the shapes; THREADS sets
# OPENBLAS_NUM_THREADS (both MSM paths then use that many cores).
set -euo pipefail

out=${1:?usage: benchmarks/aligned.sh OUT}
windows=${WINDOWS:-1,2,3,5}
eval_windows=${EVAL_WINDOWS:-1 2 3}
counts=(--n-train 0 --n-good "${GOOD:-30}" --n-defect "${DEFECT:-5}")
[ -n "${THREADS:-}" ] && export OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
mkdir -p "$out"

zsad bench scoring --out "$out/scoring" --n "${N:-10,20}" --bank "${BANK:-32}" --taps 0 \
  --max-baseline-mb 0 --align-window "$windows"

tiny=(--method staps --model zsad-tiny --pretrained random --image-size 224 --no-progress)
fixtured=(--categories bracket,chip)

# The detection runs of one data folder into folder $2: global and each window, with STAS
# (eval-*) and, for the fixtured categories, without (eval-raw-*); $3... narrows the categories.
detection() {
  local data=$1 dir=$2
  shift 2
  zsad eval "$data" "${tiny[@]}" "$@" --out "$dir/eval-global"
  zsad eval "$data" "${tiny[@]}" "${fixtured[@]}" --no-stas --rscin-k 1 --out "$dir/eval-raw-global"
  for w in $eval_windows; do
    zsad eval "$data" "${tiny[@]}" "$@" --align-window "$w" --out "$dir/eval-w$w"
    zsad eval "$data" "${tiny[@]}" "${fixtured[@]}" --no-stas --rscin-k 1 --align-window "$w" \
      --out "$dir/eval-raw-w$w"
  done
}

zsad make-data "$out/data" --seed 0 "${counts[@]}"
detection "$out/data" "$out"
for seed in ${SEEDS:-1 2 3 4 5}; do
  zsad make-data "$out/seeds/s$seed/data" --seed "$seed" "${fixtured[@]}" "${counts[@]}"
  detection "$out/seeds/s$seed/data" "$out/seeds/s$seed" "${fixtured[@]}"
done
python "$(dirname "$0")/aligned_summary.py" "$out"
