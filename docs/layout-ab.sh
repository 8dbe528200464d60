#!/usr/bin/env bash
# One GPU, one call: the CUDA tests, then profile.py before the layout change and now, the same
# command, alternated. The old code goes in old/ first, carried to the device (it is git-ignored):
#   mkdir -p old /tmp/o && git archive 5441169 | tar -x -C /tmp/o && cp /tmp/o/*.py old/
# $1: "b8" (batch 8) or "eq" (the equal-memory shapes: Full at 30 rows, DynTS at 94).
set -u
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
common="--preset r1-llama-8b --prompt-len 500 --budget 5000 --window 2000 --jump --cuda-graphs"
if [ "$1" = b8 ]; then
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_fastpath.py tests/test_profile.py tests/test_generate.py -k "cuda or graph or triton" 2>&1 | tail -3
  runs=("--policies full,dynts --steps 15000 --batch-size 8")
else
  runs=("--policies full --steps 15000 --batch-size 30" "--policies dynts --steps 7000 --batch-size 94")
fi
for i in "${!runs[@]}"; do
  for v in old new; do
    dir=.; [ $v = old ] && dir=old
    (cd $dir && python3 profile.py $common ${runs[$i]} --json $OUT/$1-$i-$v.json) > $OUT/$1-$i-$v.txt 2>&1
    echo "== $v: ${runs[$i]}"; grep -v "^  \.\.\." $OUT/$1-$i-$v.txt | tail -14
  done
done
