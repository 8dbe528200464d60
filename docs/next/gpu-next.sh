#!/usr/bin/env bash
# The next GPU session's work (issue 22), in one detached job on one GPU (about 25 minutes on an
# H200, estimated from the 30% rows' 17; poll until done): the rows at 45% that seeds 1 and 2 lack
# (seed 0 has them all), then the equal-mean pair on seeds 1 and 2 (rkv-native+p at 25.2% and
# DynTS at 35.5% of Full's validation peak: each near the other's mean cache at 30%).
# Seeds 1 and 2's runs so far are in docs/next/baselines-seeds12-gpu.json.gz; seed 1's lexical at 45%
# is copied from there into OUT_DIR/ev12 so that eval-gpu.sh skips it. The equal-mean pair starts
# once every 45% run has started, so that it fills the GPU while the last of those finish.
# Afterwards, here: `bash docs/next/baselines-3seeds-results.sh OUT_DIR` pools the three seeds
# (OUT_DIR/ev12, OUT_DIR/ev-equal-mean). Everything lands in OUT_DIR/results.tgz, refreshed each minute
# ($OUT refuses names with "+").
# usage: bash docs/next/gpu-next.sh OUT_DIR   (started detached: setsid nohup ... &)
# The earlier sitting (2026-12-05, one H200) profiled at equal memory and ran the 30% rows; this
# file as of commit 73d6487 shows it.
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
python - "$out/ev12/s1-lexical-0.45.json" <<'PY'
import gzip, json, sys
records = json.load(gzip.open("docs/next/baselines-seeds12-gpu.json.gz", "rt"))["records"]
done = [r for r in records if (r["model_seed"], r["policy"], r.get("fraction")) == (1, "lexical", 0.45)]
json.dump({"records": done}, open(sys.argv[1], "w"))
PY
export N=72 ABLATIONS="" OMP_NUM_THREADS=1
equal_mean() {  # after every 45% run has started (31 logs: 16 policies on 2 seeds, less lexical on seed 1)
  while [ "$(ls "$out"/ev12/*.log 2>/dev/null | wc -l)" -lt 31 ]; do sleep 10; done
  echo "equal-mean pair: $(date -u +%T)"
  MAIN=rkv-native+p bash docs/eval-gpu.sh "$ck" "$out/ev-equal-mean" 3000 2 0.252 "1 2" &
  MAIN=dynts bash docs/eval-gpu.sh "$ck" "$out/ev-equal-mean" 3000 2 0.355 "1 2"
  wait
}
equal_mean &
equal=$!
MAIN="dynts-buffer rkv-native+p rkv-native h2o-native+p lexical rkv+p rkv-native-cut+p rkv-buffer+p
  h2o-native h2o+p snapkv+p snapkv-native+p snapkv-native rkv h2o snapkv" \
  bash docs/eval-gpu.sh "$ck" "$out/ev12" 3000 8 0.45 "1 2"  # ~6 GB of KV each at 45% (504 rows)
echo "45% runs done: $(date -u +%T)"
wait $equal  # the equal-mean pair
kill $packer
pack
echo "finished: $(date -u +%T)"
