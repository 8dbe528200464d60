#!/usr/bin/env bash
# The efficiency figures as the paper draws them, from continuous runs (no --jump): every step
# from 0 to 15,000 decoded and timed, three stacked panels (profile.py --plot), at batch 8 and at
# equal memory (--batch-size max); then the native baselines' cost beside DynTS at batch 8 (they
# score by attention weights: no CUDA graphs for them, so DynTS runs without them too there).
# Each run writes OUT_DIR/<name>.json, .txt and .png.
# usage: bash docs/profile-gpu.sh OUT_DIR [STEPS]
set -eu
out=$1 steps=${2:-15000}
mkdir -p "$out"
common="--preset r1-llama-8b --prompt-len 500 --steps $steps --budget 5000 --window 2000"
run() {  # name, then profile.py's other flags
  name=$1; shift
  echo "== $name: $(date -u +%T)"
  python profile.py $common "$@" --json "$out/$name.json" --plot "$out/$name.png" | tee "$out/$name.txt"
}
run profile-r1-llama-8b --policies full,dynts --batch-size 8 --cuda-graphs
run profile-r1-llama-8b-equal-memory --policies full,dynts --batch-size max --cuda-graphs
run profile-native-8b --policies dynts,h2o-native,snapkv-native,rkv-native --batch-size 8 --steps 6000
echo "done: $(date -u +%T)"
