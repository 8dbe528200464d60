#!/usr/bin/env bash
# The efficiency figures as the paper draws them, from continuous runs (no --jump): every step
# from 0 to 15,000 decoded and timed, three stacked panels (profile.py --plot), at batch 8
# (docs/profile-r1-llama-8b-h200.txt) and at equal memory (--batch-size max;
# docs/profile-r1-llama-8b-equal-memory-h200.txt); then the native baselines' cost beside DynTS at
# batch 8.
# The native baselines score by attention weights, which the CUDA-graph step does not return, so
# they decode on the plain path, DynTS too there for a like-for-like share: that path is slow at
# this shape (171-205 tokens/s on an H100, 2026-12-05), so that run jumps to its marks (2k, and the
# eviction cycle that holds 5k: 2,100 steps for DynTS and SnapKV).
# Each run writes OUT_DIR/<name>.json and .txt (and .png where matplotlib is installed).
# usage: [RUNS="batch8 equal native"] [MEMORY_GIB=G] bash docs/profile-gpu.sh OUT_DIR [STEPS]
# MEMORY_GIB: the equal-memory run fills G GiB instead of all that is free (78.7: what the H100
# 80GB run of 2026-11-27 had free, so about its 30 and 94 rows again).
# Minutes on one H200, measured: batch8 3.4, equal 7.1 with MEMORY_GIB=78.7 (about 13 without,
# estimated), native 5 (before model.py's decode step left SDPA); native 3.5 on one H100 (after).
set -eu
out=$1 steps=${2:-15000}
mkdir -p "$out"
common="--preset r1-llama-8b --prompt-len 500 --budget 5000 --window 2000"
plot() { python -c "import matplotlib" 2>/dev/null && echo "--plot $out/$1.png" || true; }
run() {  # name, then profile.py's other flags
  name=$1; shift
  echo "== $name: $(date -u +%T)"
  python profile.py $common "$@" --json "$out/$name.json" $(plot "$name") | grep -v '^  \.\.\.' | tee "$out/$name.txt"
}
for r in ${RUNS:-batch8 equal native}; do
  case $r in
    batch8) run profile-r1-llama-8b --steps "$steps" --policies full,dynts --batch-size 8 --cuda-graphs ;;
    equal) run profile-r1-llama-8b-equal-memory --steps "$steps" --policies full,dynts --batch-size max --cuda-graphs \
             ${MEMORY_GIB:+--memory-gib $MEMORY_GIB} ;;
    native) run profile-native-8b --steps 5000 --jump --policies dynts,h2o-native,snapkv-native,rkv-native --batch-size 8 ;;
    *) echo "unknown run $r (batch8, equal, native)"; exit 2 ;;
  esac
done
echo "done: $(date -u +%T)"
