#!/usr/bin/env bash
# The paper regime's whole GPU run in one background job: train three seeds (docs/train-gpu.sh),
# then evaluate them (docs/eval-gpu.sh) until END_S seconds after the start, main comparison at
# 30% first, then the confirmatory problems (EVAL_SEED=1), then 45%. Started detached (setsid) so
# that it outlives one device call; poll with `tail out/paper/pipeline.log`.
# usage: [STEPS=4500] [END_S=1380] [EVAL=1] bash docs/paper-gpu.sh OUT_DIR
# (2,400 steps took 10.5 minutes for the three seeds on one H200 and left them undertrained; 4,500
# take about 18, so EVAL=0 there: the checkpoints come back through $OUT for the next session's eval.)
# Poll with a command that ends by itself (`sleep 540; tail ...`): a `wait` on a progress loop never returns.
set -u
out=$1 start=$(date +%s) end=$(( $(date +%s) + ${END_S:-1380} ))
mkdir -p "$out"
left() { echo $(( end - $(date +%s) )); }
echo "train: $(date -u +%T)"
BATCH=16 bash docs/train-gpu.sh "$out/ck" "0 1 2" "${STEPS:-4500}"
[ "${EVAL:-1}" = 1 ] || exit 0
echo "eval: $(date -u +%T), $(left) s left"
main="full dynts lexical oracle dynts-random window+p h2o+p snapkv+p rkv+p sepllm+p"
N=72 MAIN="$main" ABLATIONS="" bash docs/eval-gpu.sh "$out/ck" "$out/ev" $(( $(left) - 200 )) 10 "0.3" "0 1 2"
echo "confirmatory: $(date -u +%T), $(left) s left"
N=72 EVAL_SEED=1 MAIN="full dynts lexical oracle" ABLATIONS="" bash docs/eval-gpu.sh "$out/ck" "$out/ev-confirm" $(( $(left) - 150 )) 10 "0.3" "0 1 2"
echo "45%: $(date -u +%T), $(left) s left"
N=72 MAIN="$main" ABLATIONS="" bash docs/eval-gpu.sh "$out/ck" "$out/ev45" $(( $(left) - 120 )) 10 "0.45" "0 1 2"
echo "finished: $(date -u +%T) after $(( $(date +%s) - start )) s"
