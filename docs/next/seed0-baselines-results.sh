#!/usr/bin/env bash
# Issue 22 on the GPU, seed 0 only (docs/next/gpu-2026-12-05.sh): the baselines' runs on seed 0's
# 504 test problems at 30% (and 45%, where RUN_DIR/ev45 has them), pooled with seed 0's Full, DynTS
# and lexical records from
# docs/eval-paper-h200.json.gz (the same checkpoint, problems and budget), then the tables and pairs.
# Writes docs/next/baselines-seed0-gpu.{txt,json.gz,png}, -tables.md, -pairs.txt.
# RUN_DIR/ev-equal-mean, where present, holds the equal-mean pair (rkv-native+p at 25.2% and DynTS at
# 35.5%: each at the other's mean cache at 30%), paired in -pairs.txt; RUN_DIR/ev45 may also hold
# dynts-buffer at 30% and 45% (DynTS's scores on R-KV's buffer schedule), paired with DynTS and rkv-native+p.
# usage: bash docs/next/seed0-baselines-results.sh RUN_DIR   (RUN_DIR/ev/s0-*.json, RUN_DIR/ev45/s0-*.json)
set -eu
run=$1 to=docs/next/baselines-seed0-gpu
tmp=$(mktemp --suffix .json)
trap 'rm -f "$tmp"' EXIT
python - "$tmp" <<'PY'
import gzip, json, sys
records = json.load(gzip.open("docs/eval-paper-h200.json.gz", "rt"))["records"]
keep = [r for r in records if r["model_seed"] == 0 and r["policy"] in ("full", "dynts", "lexical")
        and r["fraction"] in (None, 0.3, 0.45)]
json.dump({"records": keep}, open(sys.argv[1], "w"))
PY
plot=$(python -c "import matplotlib" 2>/dev/null && echo "--plot $to.png" || true)
python -m lab.eval --merge "$tmp" "$run"/ev/s0-*.json $(ls "$run"/ev45/s0-*.json "$run"/ev-equal-mean/s0-*.json 2>/dev/null) --json "$to.json.gz" $plot > "$to.txt"
python docs/results_table.py "$to.json.gz" > "$to-tables.md"
python docs/next/native_pairs.py "$to.json.gz" 0.3 --present-only rkv-native-cut+p@0.3:rkv-native+p@0.3 \
  rkv-native-cut+p@0.3:rkv+p@0.3 rkv-buffer+p@0.3:rkv+p@0.3 rkv-buffer+p@0.3:rkv-native+p@0.3 \
  rkv-native+p@0.252:dynts@0.3 rkv-native+p@0.3:dynts@0.355 rkv-native-cut+p@0.45:rkv+p@0.45 \
  rkv-buffer+p@0.45:rkv+p@0.45 rkv-buffer+p@0.45:rkv-native+p@0.45 \
  dynts-buffer@0.3:dynts@0.3 dynts-buffer@0.3:rkv-native+p@0.3 dynts@0.355:dynts-buffer@0.3 \
  dynts-buffer@0.45:dynts@0.45 dynts-buffer@0.45:rkv-native+p@0.45 > "$to-pairs.txt"
python docs/next/native_pairs.py "$to.json.gz" 0.45 >> "$to-pairs.txt"
echo "wrote $to.txt, .json.gz, -tables.md, -pairs.txt"
