#!/usr/bin/env bash
# The next GPU session's work, in one detached job on one GPU (issue 22), longest-lived first:
#  1. seeds 1 and 2 trained again as out/paper-v2's were (their checkpoints were lost with a
#     checkout on 2026-12-05; about 18 minutes), and beside them (not timed) seed 0's baselines left
#     at 45%, the two equal-mean runs and rkv-buffer+p;
#  2. once the checkpoints exist, seeds 1 and 2's rows at 30% then 45%, policy by policy, until the
#     machine goes (eval-gpu.sh skips a run whose JSON exists, so the next call finishes the rest).
# The equal-memory profile (issue 24; about 11 minutes, timed, so alone on the GPU) is not here: it
# cannot share the GPU with training, and both do not fit in one session's 30 device-minutes.
# Compare each new train-seed<S>.log with docs/next/paper-v2-train-seed<S>-h200.log: the same losses
# and validation budgets mean the same models as the tables'; otherwise every row runs again on the
# new ones (likely: the eviction rule that builds training's masks changed after those runs, 0a7425d).
# Everything but the checkpoints lands in OUT_DIR/results.tgz, refreshed each minute ($OUT refuses
# names with "+"); the checkpoints (9.5 MiB each; $OUT returns files of at most 16 MiB) come back
# one file each: cp OUT_DIR/ck/seed*.pt OUT_DIR/ck/train-seed*.log $OUT/.
# usage: bash docs/next/gpu-next.sh OUT_DIR   (started detached: setsid nohup ... &; poll results.tgz)
set -u
out=$1
mkdir -p "$out" out/paper-v2
[ -f out/paper-v2/seed0.pt ] || cp ckpt/tiny-reasoner.pt out/paper-v2/seed0.pt  # the shipped model is paper-v2's seed 0
pack() {  # written beside, then moved in: tar fails on a folder that changes as it reads
  tar czf "$out.tmp.tgz" -C "$out" --exclude='*.tgz' --exclude='*.state' --exclude='*.pt' . && mv "$out.tmp.tgz" "$out/results.tgz"
}
(while sleep 60; do pack; done) &
packer=$!
echo "start: $(date -u +%T)"
OMP_NUM_THREADS=6 BATCH=16 bash docs/train-gpu.sh "$out/ck" "1 2" 4500 &  # as docs/paper-gpu.sh trained out/paper-v2
train=$!
seed0() { N=72 ABLATIONS="" MAIN="$1" OMP_NUM_THREADS=1 bash docs/eval-gpu.sh out/paper-v2 "$out/$2" 3000 "$3" "$4" 0; }
seed0 "rkv-native+p h2o-native+p rkv-native h2o-native snapkv-native rkv-buffer+p" ev45 6 0.45 &
seed0 rkv-native+p ev-equal-mean 1 0.252 &
seed0 dynts ev-equal-mean 1 0.355 &
seed0 rkv-buffer+p ev 1 0.3 &
wait $train
echo "trained: $(date -u +%T)"
cp "$out"/ck/seed1.pt "$out"/ck/seed2.pt out/paper-v2/
N=72 ABLATIONS="" OMP_NUM_THREADS=1 MAIN="full dynts lexical rkv-native+p h2o-native+p snapkv-native+p rkv+p h2o+p snapkv+p
  rkv-native-cut+p rkv-buffer+p oracle dynts-random window+p streaming+p sepllm+p h2o-last+p
  rkv-native h2o-native snapkv-native rkv h2o snapkv window streaming sepllm h2o-last" \
  bash docs/eval-gpu.sh out/paper-v2 "$out/ev12" 3000 12 "0.3 0.45" "1 2"
wait
kill $packer
pack
echo "finished: $(date -u +%T)"
