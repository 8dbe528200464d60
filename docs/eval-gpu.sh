#!/usr/bin/env bash
# The GPU evaluation behind docs/RESULTS.md's comparison: every policy on N held-out problems per
# family, at the budget levels (fractions of Full's peak cache on validation problems),
# for three model seeds (CKPT_DIR/seed0.pt, seed1.pt, seed2.pt). One eval.py process per
# (seed, policy, level), PROCS_PER_GPU of them on each GPU, started in priority order (policy by
# policy, each on every seed) until DEADLINE_S seconds from now; each writes
# OUT_DIR/s<seed>-<policy>-<level>.json (and is skipped where that file exists, so a second call
# finishes what a first one left).
# Pool them afterwards with `python -m lab.eval --merge OUT_DIR/*.json`.
# usage: [GPUS="0 1 2"] [N=72] [BATCH=1000] [EVAL_SEED=0] [MAIN="full dynts ..."] [ABLATIONS="..."]
#        bash docs/eval-gpu.sh CKPT_DIR OUT_DIR [DEADLINE_S] [PROCS_PER_GPU] [LEVELS] [SEEDS]
# GPUS: which GPUs to use (default all); N: problems per family (default eval.py's); BATCH:
# problems decoded together (default 1000); EVAL_SEED: which held-out problems (default 0);
# MAIN, ABLATIONS: the policies (default the lists below).
set -u
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}  # many processes share the CPU
export ck=$1 out=$2 deadline=$(( $(date +%s) + ${3:-520} ))
per_gpu=${4:-3} levels=${5:-"0.3 0.45 0.2 0.6"} seeds=${6:-"0 1 2"}
export gpu_list=${GPUS:-$(seq -s " " 0 $(( $(nvidia-smi -L | wc -l) - 1 )))}
gpus=$(wc -w <<< "$gpu_list")
mkdir -p "$out"
main=${MAIN:-"full dynts oracle lexical dynts-random window streaming sepllm h2o h2o-last snapkv rkv
      window+p streaming+p sepllm+p h2o+p h2o-last+p snapkv+p rkv+p
      h2o-native snapkv-native rkv-native h2o-native+p snapkv-native+p rkv-native+p"}
ablations=${ABLATIONS-"dynts-bottom dynts-noprompt random-all bottom-all noquestion"}
jobs() {  # policy by policy, each on every seed, so that a deadline leaves whole rows
  for level in $levels; do
    for p in $main; do
      for seed in $seeds; do
        if [ "$p" != full ] || [ "$level" = 0.3 ]; then echo "$seed $p $level"; fi
      done
    done
    if [ "$level" = 0.3 ]; then
      for seed in $seeds; do for p in $ablations; do echo "$seed $p $level"; done; done
    fi
  done
}
run() {  # job number, seed, policy, level
  [ "$(date +%s)" -lt "$deadline" ] || exit 0
  read -ra list <<< "$gpu_list"
  export CUDA_VISIBLE_DEVICES=${list[$(( $1 % ${#list[@]} ))]}
  name="s$2-$3-$4"
  [ -f "$out/$name.json" ] && exit 0  # done by an earlier call
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python -m lab.eval --ckpt "$ck/seed$2.pt" --policies "$3" --fractions "$4" --ranking-traces 0 \
    ${N:+--n $N} --seed "${EVAL_SEED:-0}" --batch-size "${BATCH:-1000}" \
    --json "$out/$name.json" > "$out/$name.log" 2>&1 || echo "FAILED $name"
}
export -f run
export N EVAL_SEED BATCH
jobs | nl -v0 | xargs -P $(( gpus * per_gpu )) -L1 bash -c 'run "$@"' _
echo "done: $(ls "$out"/*.json 2>/dev/null | wc -l) of $(jobs | wc -l) runs"
