#!/usr/bin/env bash
# This session's GPU work in one detached job (one H200, 2026-12-05): the baselines with the prompt protected, official and native forms, and R-KV's
# scores on DynTS's schedule, on seed 0's 504 test problems at 30% (issue 22: seeds 1 and 2's
# checkpoints did not survive the move to a new checkout); then the equal-memory profile (issue 24).
# usage: bash docs/next/gpu-2026-12-05.sh OUT_DIR
out=$1; mkdir -p "$out"
echo "evals: $(date -u +%T)"
N=72 ABLATIONS="" MAIN="rkv-native+p h2o-native+p snapkv-native+p rkv+p h2o+p snapkv+p rkv-native-cut+p" \
  OMP_NUM_THREADS=2 bash docs/eval-gpu.sh out/paper-v2 "$out/ev" 600 7 0.3 0
MEMORY_GIB=78.7 RUNS=equal bash docs/profile-gpu.sh "$out/prof"
echo "finished: $(date -u +%T)"
