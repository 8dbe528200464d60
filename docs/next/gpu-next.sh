#!/usr/bin/env bash
# The next GPU session's work, in one detached job on one GPU (about 30 minutes; poll until done):
#  1. the equal-memory profile, continuous from 0 to 15,000 steps (issue 24's figure; timed, so
#     alone on the GPU; about 11 minutes);
#  2. then issue 22's rows on the retrained seeds 1 and 2 (ckpt/tiny-reasoner-seed1.pt and -seed2.pt,
#     trained 2026-12-05 on an H100; seed 0 is the shipped ckpt/tiny-reasoner.pt) at 30% then 45%,
#     policy by policy, and seed 0's two runs left at 45% (they ran out of memory beside training),
#     then the equal-mean pair on seeds 1 and 2, and dynts-buffer (DynTS on R-KV's schedule) on all
#     three, until the machine goes: eval-gpu.sh skips a run whose JSON exists, so a later call with
#     the same OUT_DIR/ev* carried back finishes the rest.
# Afterwards, here: OUT_DIR/prof/profile-r1-llama-8b-equal-memory.{txt,json,png} replace
# docs/profile-r1-llama-8b-equal-memory*.{txt,json.gz} and .png (README's efficiency figure, EFFICIENCY.md
# "At equal memory"); `bash docs/next/baselines-3seeds-results.sh OUT_DIR` pools the three seeds.
# Everything lands in OUT_DIR/results.tgz, refreshed each minute ($OUT refuses names with "+").
# usage: bash docs/next/gpu-next.sh OUT_DIR   (started detached: setsid nohup ... &; poll results.tgz)
set -u
out=$1 ck=out/paper-v3
mkdir -p "$out" "$ck"
cp ckpt/tiny-reasoner.pt "$ck/seed0.pt"
cp ckpt/tiny-reasoner-seed1.pt "$ck/seed1.pt"
cp ckpt/tiny-reasoner-seed2.pt "$ck/seed2.pt"
pack() {  # written beside, then moved in: tar fails on a folder that changes as it reads
  tar czf "$out.tmp.tgz" -C "$out" --exclude='*.tgz' --exclude='*.state' --exclude='*.pt' . && mv "$out.tmp.tgz" "$out/results.tgz"
}
(while sleep 60; do pack; done) &
packer=$!
echo "start: $(date -u +%T)"
MEMORY_GIB=78.7 RUNS=equal bash docs/profile-gpu.sh "$out/prof"
pack
echo "profiled: $(date -u +%T)"
export N=72 ABLATIONS="" OMP_NUM_THREADS=1
MAIN="rkv-native+p rkv-buffer+p" bash docs/eval-gpu.sh "$ck" "$out/ev45" 3000 2 0.45 0 &
MAIN=dynts-buffer bash docs/eval-gpu.sh "$ck" "$out/ev-buffer" 3000 1 "0.3 0.45" 0 &  # seed 0's (1 and 2: below)
MAIN="full dynts lexical dynts-buffer rkv-native+p h2o-native+p snapkv-native+p rkv+p h2o+p snapkv+p rkv-native-cut+p
  rkv-buffer+p rkv-native h2o-native snapkv-native rkv h2o snapkv" \
  bash docs/eval-gpu.sh "$ck" "$out/ev12" 3000 6 "0.3 0.45" "1 2"  # 8 at once in all: ~6 GB of KV each at 45% (504 rows)
MAIN=rkv-native+p bash docs/eval-gpu.sh "$ck" "$out/ev-equal-mean" 3000 2 0.252 "1 2" &  # each at the other's
MAIN=dynts bash docs/eval-gpu.sh "$ck" "$out/ev-equal-mean" 3000 2 0.355 "1 2"           # mean cache at 30%
wait
kill $packer
pack
echo "finished: $(date -u +%T)"
