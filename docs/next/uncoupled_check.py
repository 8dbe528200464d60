"""Was an eval run's batch coupled? Under the old rule (the kept count followed the row with the
most +inf older slots), one row's runaway answer made every row keep more. Every row of a batch
shares one cache length at every step, and without coupling that length follows a sawtooth fixed
by the prompt, the budget, the window and the ratio. A row's recorded mean cache (mean_kv, over
its own n tokens) must then equal the sawtooth's mean over its first n steps for some n; a row
for which no n fits saw a longer cache than the rule gives. Prints, per run, the rows that fit.
usage: python docs/next/uncoupled_check.py RUN.json... [--prompt-len P] [--ratio R] (defaults 96, 0.3)"""

import json
import math
import sys

import numpy as np

args = sys.argv[1:]
P = int(args[args.index("--prompt-len") + 1]) if "--prompt-len" in args else 96
ratio = float(args[args.index("--ratio") + 1]) if "--ratio" in args else 0.3
files = [a for a in args if a.endswith(".json")]


def sawtooth_means(budget, window, ratio, steps=8192):
    """The mean cache length over the first n steps, for n = 1..steps (index n - 1)."""
    seq, L = [P], P
    for _ in range(steps - 1):
        L += 1
        seq.append(L)
        if L >= budget:
            L = window + max(P, math.floor(ratio * (L - window)))
    return np.cumsum(seq) / np.arange(1, steps + 1)


for f in files:
    records = json.load(open(f))["records"]
    rs = [r for r in records if r["budget"] is not None]
    if not rs:
        continue
    means = sawtooth_means(rs[0]["budget"], rs[0]["window"], ratio)
    fits = sum(bool(np.isclose(means, r["mean_kv"], rtol=0, atol=1e-6).any()) for r in rs)
    print(f"{f}: {fits} of {len(rs)} rows fit the uncoupled sawtooth")
