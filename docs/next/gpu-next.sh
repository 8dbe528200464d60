#!/usr/bin/env bash
# The last GPU sitting's work (issue 22; one H100, 2026-12-05, 5 minutes of runs), one detached job on one GPU
# (poll until done):
# - seed 0's official `rkv`, `h2o` and `snapkv` at 45% (seeds 1 and 2 have them; seed 0 ran only the
#   forms with the prompt protected at 45%), so that those rows pool three seeds;
# - the equal-mean pair at 45% on all three seeds: `rkv-native+p` at 37.2% of Full's validation peak
#   (its mean cache near DynTS's 1,898 tokens at 45%) and DynTS at 53.9% (near `rkv-native+p`'s
#   2,214 at 45%), the levels read off the two policies' mean caches at 25.2/30/45% and 30/35.5/45%.
# At most six runs at once: each takes about 9-11 GB at these budgets, and an H100 has 80 GB.
# Afterwards, here: `bash docs/next/baselines-3seeds-results.sh OUT_DIR` pools the three seeds.
# Everything lands in OUT_DIR/results.tgz, refreshed each minute ($OUT refuses names with "+").
# usage: bash docs/next/gpu-next.sh OUT_DIR   (started detached: setsid nohup ... &)
# The earlier sittings (2026-12-05: one H200, then two on an H100) profiled at equal memory and ran
# the 30% and 45% rows, the equal-mean pair at 30% and dynts-keep-restated; this file as of commits
# 73d6487, 2db3c67 and ae5982d shows them.
set -u
out=${1:?usage: bash docs/next/gpu-next.sh OUT_DIR} ck=out/paper-v3
nvidia-smi -L > /dev/null 2>&1 || { echo "gpu-next.sh: no GPU here (nvidia-smi -L failed): run it on the device machine" >&2; exit 1; }
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
export N=72 ABLATIONS="" OMP_NUM_THREADS=1
MAIN="rkv-native+p" bash docs/eval-gpu.sh "$ck" "$out/ev-equal-mean45" 3000 3 0.372 "0 1 2" &
first=$!
MAIN="rkv h2o snapkv" bash docs/eval-gpu.sh "$ck" "$out/ev45s0" 3000 3 0.45 "0"
echo "seed 0's official forms done: $(date -u +%T)"
MAIN="dynts" bash docs/eval-gpu.sh "$ck" "$out/ev-equal-mean45" 3000 3 0.539 "0 1 2"
wait $first  # not a bare wait: that would wait on the packer, which never ends
echo "equal-mean pair at 45% done: $(date -u +%T)"
kill $packer
pack
echo "finished: $(date -u +%T)"
