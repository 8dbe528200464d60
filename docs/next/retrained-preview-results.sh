#!/usr/bin/env bash
# The retrained seeds' CPU preview (docs/RESULTS.md, "The seeds trained again: a first look on the
# CPU"): every run that docs/next/native-preview-cpu.sh left in OUT_DIR (s<seed>-<policy>-<level>),
# each run's line, their records pooled, and the pairs: at 30% the oracle and Full against DynTS; at
# 45% the two-by-two of scores (DynTS's predicted, R-KV's per head, R-KV's shared) by schedule
# (DynTS's cut, R-KV's buffer), and dynts-buffer at 30% against DynTS at 45% (about their mean cache).
# (native_pairs.py adds each native form against DynTS.) A pair is made on the seeds that ran both.
# Writes docs/next/retrained-preview-cpu-runs.txt, .json.gz and -pairs.txt.
# usage: bash docs/next/retrained-preview-results.sh [OUT_DIR]   (default out/preview45)
set -eu
dir=${1:-out/preview45} to=docs/next/retrained-preview-cpu
for f in "$dir"/s*.txt; do echo "== $f"; cat "$f"; done > "$to-runs.txt"
python -m lab.eval --merge "$dir"/s*.json.gz --json "$to.json.gz" > /dev/null
python docs/next/native_pairs.py "$to.json.gz" 0.3 oracle@0.3:dynts@0.3 full@0.3:dynts@0.3 full@0.3:oracle@0.3 \
  > "$to-pairs.txt"
python docs/next/native_pairs.py "$to.json.gz" 0.45 dynts-buffer@0.45:dynts@0.45 \
  rkv-native@0.45:dynts-buffer@0.45 dynts-buffer@0.45:rkv-buffer+p@0.45 rkv-native@0.45:rkv-native-cut+p@0.45 \
  rkv-buffer+p@0.45:rkv-native-cut+p@0.45 dynts-buffer@0.3:dynts@0.45 \
  >> "$to-pairs.txt"
echo "wrote $to-runs.txt, .json.gz, -pairs.txt"
