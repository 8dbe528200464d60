#!/usr/bin/env bash
# Issue 22's CPU preview on one more model seed: the same 70 test problems (10 per family, problem
# seed 0) as seed 0's preview, one process per run, most informative first (DynTS against R-KV's two
# forms, then the equal-mean pair, then H2O and SnapKV, then Full), so that a run cut short still
# leaves whole runs. Run one seed per core: `bash docs/next/native-preview-cpu.sh 1 out/preview &`.
# RUNS (policy@level ...) replaces the list; CK the checkpoints' folder (seed<S>.pt; default out/paper-v2).
# usage: [RUNS="..."] [CK=DIR] bash docs/next/native-preview-cpu.sh MODEL_SEED OUT_DIR
set -u
seed=$1 out=$2
mkdir -p "$out"
export OMP_NUM_THREADS=1
runs=${RUNS:-"dynts@0.3 rkv-native+p@0.3 rkv+p@0.3 rkv-native+p@0.252 dynts@0.355
      h2o-native+p@0.3 h2o+p@0.3 snapkv-native+p@0.3 snapkv+p@0.3 full@0.3"}
for run in $runs; do
  policy=${run%@*} level=${run#*@} file="$out/s$seed-$policy-$level.json.gz"
  [ -f "$file" ] && continue
  echo "s$seed $run: $(date -u +%T)"
  python -m lab.eval --ckpt "${CK:-out/paper-v2}/seed$seed.pt" --policies "$policy" --fractions "$level" \
    --ranking-traces 0 --n 10 --batch-size 70 --device cpu --json "$out/part-s$seed-$policy-$level.json.gz" > "$out/s$seed-$policy-$level.txt" 2>&1 \
    && mv "$out/part-s$seed-$policy-$level.json.gz" "$file"
done
echo "s$seed done: $(date -u +%T)"
