#!/usr/bin/env bash
# Pools issue 22's CPU preview over the three model seeds: seed 0's runs (docs/next/*-seed0-cpu.json.gz)
# and seeds 1 and 2's (docs/next/native-preview-cpu.sh's OUT_DIR), keeping each (policy, level) that
# both seeds 1 and 2 finished, so that every row pools the same three seeds. Writes
# docs/next/native-preview-3seeds-cpu.{txt,json.gz,png}, its tables (docs/results_table.py) and the
# pairs (native_pairs.py: each native form against its official one, DynTS against each, and the
# two equal-mean comparisons).
# usage: bash docs/next/native-preview-results.sh [OUT_DIR]   (default out/preview)
set -eu
dir=${1:-out/preview} to=docs/next/native-preview-3seeds-cpu
runs="" policies=""
for f in "$dir"/s1-*.json.gz; do
  run=${f##*/s1-}  # POLICY-LEVEL.json.gz
  [ -f "$dir/s2-$run" ] || continue
  runs="$runs $f $dir/s2-$run" policies="$policies ${run%.json.gz}"  # POLICY-LEVEL
done
[ -n "$runs" ] || { echo "native-preview-results.sh: no run that seeds 1 and 2 both finished in $dir"; exit 2; }
seed0="docs/next/native-preview-seed0-cpu.json.gz"
case " $policies " in *" rkv-native+p-0.252 "*) seed0="$seed0 docs/next/rkv-native-equal-mean-seed0-cpu.json.gz";; esac
case " $policies " in *" dynts-0.355 "*) seed0="$seed0 docs/next/dynts-equal-mean-seed0-cpu.json.gz";; esac
names=$(for p in $policies; do echo "${p%-*}"; done | sort -u | paste -sd,)
python -m lab.eval --merge $seed0 $runs --policies "$names" --json "$to.json.gz" --plot "$to.png" > "$to.txt"
python docs/results_table.py "$to.json.gz" > "$to-tables.md"
pairs=""
case " $policies " in *" rkv-native+p-0.252 "*) pairs="$pairs rkv-native+p@0.252:dynts@0.3";; esac
case " $policies " in *" dynts-0.355 "*) pairs="$pairs dynts@0.355:rkv-native+p@0.3";; esac
python docs/next/native_pairs.py "$to.json.gz" 0.3 $pairs > "$to-pairs.txt"
echo "pooled: $names (seeds 0, 1, 2); wrote $to.txt, .json.gz, .png, -tables.md, -pairs.txt"
