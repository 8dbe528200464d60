#!/usr/bin/env bash
# Train the tiny reasoner on the GPU: one train.py process per seed, one seed per GPU (round
# robin), all at once; each writes OUT_DIR/seed<S>.pt and OUT_DIR/train-seed<S>.log.
# usage: bash docs/train-gpu.sh OUT_DIR "SEEDS" [STEPS]
set -u
out=$1 seeds=$2 steps=${3:-3000}
gpus=$(nvidia-smi -L | wc -l)
mkdir -p "$out"
i=0
for s in $seeds; do
  CUDA_VISIBLE_DEVICES=$(( i % gpus )) python train.py --seed "$s" --steps "$steps" --valid-problems 100 ${BLOCKS:+--blocks $BLOCKS} \
    --out "$out/seed$s.pt" --force > "$out/train-seed$s.log" 2>&1 &
  i=$(( i + 1 ))
done
wait
tail -n 3 "$out"/train-seed*.log
