#!/usr/bin/env bash
# Issue 22's GPU table over three model seeds: seed 0's records (docs/next/baselines-seed0-gpu.json.gz),
# seeds 1 and 2's runs so far (docs/next/baselines-seeds12-gpu.json.gz: the 30% rows and DynTS and
# lexical at 45%, one H200, 2026-12-05; docs/next/baselines-seeds12-h100.json.gz: most rows at 45%
# and the equal-mean pair, one H100, 2026-12-05; docs/next/baselines-h100b.json.gz: the last nine runs
# at 45% and dynts-keep-restated at 30% on all three seeds, one H100, 2026-12-05;
# docs/next/baselines-h100c.json.gz: seed 0's rkv, h2o and snapkv at 45% and the equal-mean pair at
# 45% on all three seeds, one H100, 2026-12-05), and any runs in RUN_DIR/ev*/
# (s<seed>-<policy>-<level>.json, from docs/next/gpu-next.sh; without RUN_DIR, the committed records
# alone), keeping each (policy, level) that all three seeds have, so that every
# row pools the same seeds. Writes docs/next/baselines-3seeds-gpu.{txt,json.gz,png}, -tables.md
# (intervals resampling seeds and problems), docs/next/equal-mean-3seeds-gpu.png (Pass@1 against the mean
# cache) and -pairs.txt (each native form against its official
# one and against DynTS, at 30% then 45%, pooled and per seed, the equal-mean pairs and dynts-buffer
# against DynTS and rkv-native+p where they ran, and the diagnostic dynts-keep-restated against DynTS
# and rkv-native+p where it ran).
# usage: bash docs/next/baselines-3seeds-results.sh [RUN_DIR]
set -eu
run=${1:-/nonexistent} to=docs/next/baselines-3seeds-gpu
if [ $# -gt 0 ] && [ ! -d "$run" ]; then  # a mistyped RUN_DIR would otherwise pool the committed records alone
  echo "baselines-3seeds-results.sh: RUN_DIR $run: no such directory" >&2; exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python - "$tmp" "$run" <<'PY'
import glob, gzip, json, os, sys
tmp, run = sys.argv[1:]
records = []
for done in ["docs/next/baselines-seed0-gpu.json.gz", "docs/next/baselines-seeds12-gpu.json.gz",
             "docs/next/baselines-seeds12-h100.json.gz", "docs/next/baselines-h100b.json.gz",
             "docs/next/baselines-h100c.json.gz"]:
    records += json.load(gzip.open(done, "rt"))["records"]
for f in sorted(glob.glob(f"{run}/ev*/s[012]-*.json")):
    records += json.load(open(f))["records"]
cell = lambda r: (r["policy"], r.get("fraction"))
seeds = {}
for r in records:
    seeds.setdefault(cell(r), set()).add(r["model_seed"])
kept = {c for c, s in seeds.items() if s == {0, 1, 2}}
dropped = sorted(f"{p}@{f}" for (p, f) in seeds if (p, f) not in kept)
print(f"cells on all three seeds: {len(kept)}; left out (fewer seeds): {', '.join(dropped) or 'none'}", file=sys.stderr)
seen = set()  # one record per (seed, policy, level, problem): a run repeated on a device keeps the first
unique = []
for r in records:
    key = (r["model_seed"], *cell(r), r["problem"])
    if cell(r) in kept and key not in seen:
        seen.add(key)
        unique.append(r)
json.dump({"records": unique}, open(os.path.join(tmp, "pooled.json"), "w"))
PY
plot=$(python -c "import matplotlib" 2>/dev/null && echo "--plot $to.png" || true)
python -m lab.eval --merge "$tmp/pooled.json" --json "$to.json.gz" $plot > "$to.txt"
python docs/results_table.py "$to.json.gz" > "$to-tables.md"
python docs/next/native_pairs.py "$to.json.gz" 0.3 --present-only rkv-native+p@0.252:dynts@0.3 \
  rkv-native+p@0.3:dynts@0.355 rkv-buffer+p@0.3:rkv+p@0.3 rkv-native-cut+p@0.3:rkv+p@0.3 \
  dynts-buffer@0.3:dynts@0.3 dynts-buffer@0.45:dynts@0.45 dynts-buffer@0.3:rkv-native+p@0.3 \
  dynts-buffer@0.45:rkv-native+p@0.45 dynts@0.355:dynts-buffer@0.3 dynts@0.355:dynts@0.45 dynts-keep-restated@0.3:dynts@0.3 \
  rkv-native+p@0.372:dynts@0.45 dynts@0.539:rkv-native+p@0.45 dynts@0.539:dynts-buffer@0.45 dynts@0.539:dynts@0.45 \
  rkv-buffer+p@0.45:rkv+p@0.45 rkv-native-cut+p@0.45:rkv+p@0.45 dynts-keep-restated@0.3:dynts-buffer@0.3 \
  dynts-keep-restated@0.3:rkv-native+p@0.3 > "$to-pairs.txt"
python docs/next/native_pairs.py "$to.json.gz" 0.45 >> "$to-pairs.txt"
[ -z "$plot" ] || python docs/next/equal_mean_plot.py "$to.json.gz" docs/next/equal-mean-3seeds-gpu.png
echo "wrote $to.txt, .json.gz, -tables.md, -pairs.txt"
