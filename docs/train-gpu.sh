#!/usr/bin/env bash
# Train the tiny reasoner on the GPU: one train.py process per seed, one seed per GPU (round
# robin), all at once; each writes OUT_DIR/seed<S>.pt and OUT_DIR/train-seed<S>.log, and the
# last line of each log is printed every minute.
# usage: [MAX_MINUTES=M] [BATCH=B] bash docs/train-gpu.sh OUT_DIR "SEEDS" [STEPS]
# BATCH: problems per base-model step (train.py's default: 32 on cuda)
# MAX_MINUTES: each run stops its base-model steps after M minutes, keeping OUT_DIR/seed<S>.pt.state;
# the same command again on the same machine continues them (the device machines keep ignored
# folders between calls while warm; a state is ~48 MB a seed, too big to come back through $OUT).
# On the device machine, keep OUT_DIR under an ignored folder (out/): a later call on the same
# warm machine still finds it there; copy the checkpoints to $OUT one file each (8 files of at
# most 16 MiB come back).
set -u
out=$1 seeds=$2 steps=${3:-3000}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}  # the processes share the CPU (each builds its eviction masks there)
gpus=$(nvidia-smi -L | wc -l)
mkdir -p "$out"
i=0
pids=()
for s in $seeds; do
  [ -e "$out/seed$s.pt.state" ] || : > "$out/train-seed$s.log"  # a fresh run starts its log; a resumed one appends
  CUDA_VISIBLE_DEVICES=$(( i % gpus )) python -m lab.train --seed "$s" --steps "$steps" --valid-problems 100 ${BLOCKS:+--blocks $BLOCKS} ${BATCH:+--batch-size $BATCH} \
    ${MAX_MINUTES:+--max-minutes $MAX_MINUTES} --out "$out/seed$s.pt" --force >> "$out/train-seed$s.log" 2>&1 &
  pids+=($!)
  i=$(( i + 1 ))
done
(while sleep 60; do tail -qn 1 "$out"/train-seed*.log; done) &
progress=$!
wait "${pids[@]}"
kill $progress
tail -n 4 "$out"/train-seed*.log
