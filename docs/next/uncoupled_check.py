"""Was an eval run's batch coupled? Under the old rule (before 2026-12-04's fix) the kept count
followed the row with the most +inf older slots, so one row's long answer made every row keep
more. Every row of a batch shares one cache length at every step, and without coupling that
length follows a sawtooth fixed by the prompt, the budget, the window, the ratio and the
protected older slots. A row's recorded mean cache (mean_kv, over its own n tokens) must then
equal the sawtooth's mean over its first n steps for some n; a row for which no n fits saw
another cache than the rule gives. Prints, per (policy, model seed, budget), the rows that fit,
trying each protected count in --protected (none, StreamingLLM's sinks, the prompt).
usage: python docs/next/uncoupled_check.py RECORDS.json[.gz]... [--prompt-len P] [--ratio R]
       [--protected 0,4,P]   (defaults 96, 0.3, and 0, 4, 10 and the prompt)"""

import gzip
import json
import math
import sys
from collections import defaultdict

import numpy as np

args = sys.argv[1:]
flag = lambda name, default: args[args.index(name) + 1] if name in args else default
try:
    P, ratio = int(flag("--prompt-len", 96)), float(flag("--ratio", 0.3))
    protected = [int(x) for x in flag("--protected", f"0,4,10,{P}").split(",")]
except (ValueError, IndexError) as e:  # not a number, or a flag without its value
    sys.exit(f"uncoupled_check.py: error: --prompt-len, --ratio and --protected take numbers ({e})")
files = [a for a in args if a.endswith((".json", ".json.gz"))]
if not files:
    sys.exit("usage: " + __doc__.split("usage: ")[1].split("   (")[0].strip())


def sawtooth_means(budget, window, kept_protected, steps=8192):
    """The mean cache length over the first n steps, for n = 1..steps (index n - 1)."""
    seq, L = [P], P
    for _ in range(steps - 1):
        L += 1
        seq.append(L)
        if L >= budget:
            L = min(L - 1, window + max(kept_protected, math.floor(ratio * (L - window))))
    return np.cumsum(seq) / np.arange(1, steps + 1)


for f in files:
    try:
        records = json.load(gzip.open(f) if f.endswith(".gz") else open(f))["records"]
    except (OSError, ValueError, KeyError) as e:  # no such file, not JSON, no records
        sys.exit(f"uncoupled_check.py: error: {f}: {type(e).__name__}: {e}")
    runs = defaultdict(list)
    for r in records:
        if r["budget"] is not None:  # Full never evicts
            runs[(r["policy"], r.get("model_seed"), r["budget"], r["window"])].append(r)
    for (policy, seed, budget, window), rs in sorted(runs.items(), key=str):
        curves = [sawtooth_means(budget, window, k) for k in protected]
        fits = sum(any(np.isclose(c, r["mean_kv"], rtol=0, atol=1e-6).any() for c in curves) for r in rs)
        print(f"{f}: {policy}, seed {seed}, budget {budget}: {fits} of {len(rs)} rows fit"
              + ("" if fits == len(rs) else "  <- coupled"))
