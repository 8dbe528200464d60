#!/usr/bin/env bash
# The next GPU session's work, in one detached job on one H200 (about 25 minutes):
#  1. the equal-memory profile, continuous from 0 to 15,000 steps (issue 24's figure; on 2026-12-05
#     device time ran out after Full's half, and two halves from two runs are not compared);
#  2. then, side by side on the GPU (neither is timed): seed 0's baselines left at 45%, the two
#     equal-mean runs and rkv-buffer+p (issue 22), and seeds 1 and 2 trained again as out/paper-v2's were (their
#     checkpoints were lost with a checkout on 2026-12-05). Compare each new train-seed<S>.log with
#     docs/next/paper-v2-train-seed<S>-h200.log: the same losses and validation budgets mean the same
#     models as the tables'; otherwise the core rows must run again on the new ones (likely: the
#     eviction rule that builds training's masks changed after those runs, commit 0a7425d).
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
MEMORY_GIB=78.7 RUNS=equal bash docs/profile-gpu.sh "$out/prof"
pack
N=72 ABLATIONS="" MAIN="rkv-native+p h2o-native+p rkv-native h2o-native snapkv-native rkv-buffer+p" OMP_NUM_THREADS=1 \
  bash docs/eval-gpu.sh out/paper-v2 "$out/ev45" 900 6 0.45 0 &
N=72 ABLATIONS="" MAIN="rkv-native+p" OMP_NUM_THREADS=1 bash docs/eval-gpu.sh out/paper-v2 "$out/ev-equal-mean" 900 1 0.252 0 &
N=72 ABLATIONS="" MAIN="dynts" OMP_NUM_THREADS=1 bash docs/eval-gpu.sh out/paper-v2 "$out/ev-equal-mean" 900 1 0.355 0 &
N=72 ABLATIONS="" MAIN="rkv-buffer+p" OMP_NUM_THREADS=1 bash docs/eval-gpu.sh out/paper-v2 "$out/ev" 900 1 0.3 0 &
BATCH=16 bash docs/train-gpu.sh "$out/ck" "1 2" 4500  # as docs/paper-gpu.sh trained out/paper-v2
wait
kill $packer
pack
echo "finished: $(date -u +%T)"
