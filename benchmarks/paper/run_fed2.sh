#!/usr/bin/env bash
# Issue 20 item 2: Fed2 vs FedAvg vs the structure-only ablation, 5 seeds each (~40 CPU-minutes, one core).
# Rerunning resumes. Summaries: runs/paper/fed2-*/summary.md; verdict: python benchmarks/paper/verdicts.py fed2
set -euo pipefail
cd "$(dirname "$0")/../.."
F=${FEDLOOM:-.venv/bin/fedloom}
CFG=benchmarks/paper/fed2_fmnist.yaml
OUT=${OUT:-runs/paper}
GROUPED='model={name: grouped_cnn, channels: [20, 40], hidden: 100, kernel_size: 5, groups: 5, depth: 2, group_input: full}'
$F sweep $CFG seed=0,1,2,3,4 --jobs 1 --quiet --out "$OUT/fed2-fedavg"
$F sweep $CFG seed=0,1,2,3,4 "$GROUPED" \
  'algorithm={name: fed2, group_weighting: class_counts},{name: fed2, group_weighting: fedavg}' \
  --jobs 1 --quiet --out "$OUT/fed2-grouped"
