#!/usr/bin/env bash
# The next GPU session's work (issue 22), in one detached job on one GPU (about 15 minutes on an
# H100; poll until done): the nine runs at 45% that seeds 1 and 2 still lack (seed 0 has them all),
# then the diagnostic dynts-keep-restated (docs/next/keep_restated.py) at 30% on the three seeds'
# 504 problems, started once three slots are free.
# They failed on 2026-12-05 for want of GPU memory: eight runs at once at 45% do not fit an H100's
# 80 GB (each needs about 9 GB), so six run at once here.
# Seeds 1 and 2's finished runs at 45% (docs/next/baselines-seeds12-{gpu,h100}.json.gz) are written
# into OUT_DIR/ev12 first, so that eval-gpu.sh skips them.
# Afterwards, here: `bash docs/next/baselines-3seeds-results.sh OUT_DIR` pools the three seeds.
# Everything lands in OUT_DIR/results.tgz, refreshed each minute ($OUT refuses names with "+").
# usage: bash docs/next/gpu-next.sh OUT_DIR   (started detached: setsid nohup ... &)
# The earlier sittings (2026-12-05: one H200, then one H100) profiled at equal memory and ran the
# 30% rows, most of the 45% rows and the equal-mean pair; this file as of commits 73d6487 and
# 2db3c67 shows them.
set -u
out=$1 ck=out/paper-v3
mkdir -p "$out/ev12" "$ck"
cp ckpt/tiny-reasoner-seed1.pt "$ck/seed1.pt"
cp ckpt/tiny-reasoner-seed2.pt "$ck/seed2.pt"
pack() {  # written beside, then moved in: tar fails on a folder that changes as it reads
  tar czf "$out.tmp.tgz" -C "$out" --exclude='*.tgz' --exclude='*.state' --exclude='*.pt' . && mv "$out.tmp.tgz" "$out/results.tgz"
}
(while sleep 60; do pack; done) &
packer=$!
echo "start: $(date -u +%T)"
python - "$out/ev12" <<'PY'
import gzip, json, sys
cells = {}
for done in ["docs/next/baselines-seeds12-gpu.json.gz", "docs/next/baselines-seeds12-h100.json.gz"]:
    for r in json.load(gzip.open(done, "rt"))["records"]:
        if r.get("fraction") == 0.45:
            cells.setdefault(f"s{r['model_seed']}-{r['policy']}-0.45", []).append(r)
for name, records in cells.items():
    json.dump({"records": records}, open(f"{sys.argv[1]}/{name}.json", "w"))
print(f"{len(cells)} runs at 45% already done", file=sys.stderr)
PY
export N=72 ABLATIONS="" OMP_NUM_THREADS=1
cp ckpt/tiny-reasoner.pt "$ck/seed0.pt"
keep_restated() {  # once six of the nine have finished (25 runs were copied in), or all have ended: six at most at once
  until [ "$(ls "$out"/ev12/*.json | wc -l)" -ge 31 ] || [ -f "$out/ev12.done" ]; do sleep 10; done
  echo "dynts-keep-restated: $(date -u +%T)"
  mkdir -p "$out/ev-keep"
  for seed in 0 1 2; do
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python docs/next/keep_restated.py --eval --ckpt "$ck/seed$seed.pt" \
      --policies dynts-keep-restated --fractions 0.3 --ranking-traces 0 --n 72 --seed 0 --batch-size 1000 \
      --json "$out/ev-keep/s$seed-dynts-keep-restated-0.3.json" > "$out/ev-keep/s$seed.log" 2>&1 || echo "FAILED keep s$seed" &
  done
  wait
}
keep_restated &
keep=$!
MAIN="rkv+p rkv-native-cut+p rkv-buffer+p h2o-native h2o+p snapkv+p" \
  bash docs/eval-gpu.sh "$ck" "$out/ev12" 3000 6 0.45 "1 2"
touch "$out/ev12.done"
echo "45% runs done: $(date -u +%T)"
wait $keep
kill $packer
pack
echo "finished: $(date -u +%T)"
