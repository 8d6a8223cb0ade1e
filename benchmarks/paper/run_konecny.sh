#!/usr/bin/env bash
# Issue 20 item 3: Konecny et al., ~95 CPU-minutes on one core. Rerunning resumes.
#  1. tune: client.lr in {0.05, 0.1, 0.2} per tuned variant, seed 0 (runs/paper/konecny-tune)
#  2. each tuned variant at its best lr (highest final accuracy in 1), seeds 0-4 (runs/paper/konecny-VARIANT);
#     the tuning run of seed 0 at that lr is reused, not rerun
#  The rotation pair (subsample 6.25% + 2-bit with and without the Hadamard rotation) is tuned like the others:
#  at the lr tuned for `none` (0.2) the unrotated sketch diverged (accuracy 0.11 on seeds 0 and 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
F=${FEDLOOM:-.venv/bin/fedloom}
PY=${PYTHON:-.venv/bin/python}
CFG=benchmarks/paper/konecny_mnist.yaml
OUT=${OUT:-runs/paper}
source benchmarks/paper/konecny_codecs.sh
LRS=0.05,0.1,0.2
axis=""
for v in "${TUNED[@]}"; do axis+="${axis:+,}${CODECS[$v]}"; done
$F sweep $CFG seed=0 "codecs=$axis" client.lr=$LRS --jobs 1 --quiet --out "$OUT/konecny-tune"
for v in "${TUNED[@]}"; do
  lr=$($PY benchmarks/paper/verdicts.py best-lr "$OUT/konecny-tune" "codecs=${CODECS[$v]}" --reuse "$OUT/konecny-$v/base/seed=0")
  $F sweep $CFG seed=0,1,2,3,4 "codecs=${CODECS[$v]}" client.lr=$lr --jobs 1 --quiet --out "$OUT/konecny-$v"
done
