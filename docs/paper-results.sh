#!/usr/bin/env bash
# After docs/paper-gpu.sh: pool its runs (lab/eval.py --merge) and print docs/RESULTS.md's tables
# (docs/results_table.py, with the comparison issue's targets): the main comparison (30% and 45%)
# and, apart, the confirmatory problems (EVAL_SEED=1).
# usage: bash docs/paper-results.sh RUN_DIR [PREFIX]   (RUN_DIR holds ev/, ev-confirm/, ev45/;
#        PREFIX: where the pooled files go, default docs/eval-paper)
set -eu
run=$1 prefix=${2:-docs/eval-paper}
main=$(ls "$run"/ev/*.json "$run"/ev45/*.json 2>/dev/null || true)  # (ev45/ may not exist yet)
[ -n "$main" ] || { echo "paper-results.sh: no eval JSON in $run/ev or $run/ev45"; exit 2; }
plot=$(python -c "import matplotlib" 2>/dev/null && echo "--plot $prefix.png" || true)
python -m lab.eval --merge $main --json "$prefix-h200.json.gz" $plot > "$prefix-h200.txt"
python docs/results_table.py "$prefix-h200.json.gz"
if ls "$run"/ev-confirm/*.json > /dev/null 2>&1; then
  python -m lab.eval --merge "$run"/ev-confirm/*.json --json "$prefix-confirm-h200.json.gz" > "$prefix-confirm-h200.txt"
  echo; echo "Confirmatory problems (EVAL_SEED=1):"; echo
  python docs/results_table.py "$prefix-confirm-h200.json.gz"
fi
