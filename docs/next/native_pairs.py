"""Each native baseline against its official form, and each against DynTS, paired on the problems
both decoded: Pass@1 of each, the pairs where only one was right, McNemar's exact p (pooled over
the model seeds in the records, then per seed: a Pass@1 % each and p), and each policy's mean cache. Reads eval.py --json or --merge output.
PAIRS such as rkv-native+p@0.252:dynts@0.3 pair two cells at levels of their own (equal mean cache).
A pair whose records are missing is an error, or, with --present-only, left out. LEVEL: 0.3 unless given.
usage: python docs/next/native_pairs.py RESULTS.json[.gz] [LEVEL] [--present-only] [POLICY@LEVEL:POLICY@LEVEL ...]"""

import gzip
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from lab.stats import mcnemar, paired_by_seed  # noqa: E402

args = sys.argv[1:]
if not args:
    sys.exit(__doc__.splitlines()[-1])
path, rest = args[0], [a for a in args[1:] if a != "--present-only"]
present_only = "--present-only" in args
try:
    level = float(rest.pop(0)) if rest and "@" not in rest[0] else 0.3
    pairs = [tuple((p, float(lv)) for p, lv in (cell.split("@") for cell in arg.split(":"))) for arg in rest]
    with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
        records = json.load(f)["records"]
except (OSError, ValueError, KeyError) as e:  # no such file, not JSON, no records, a malformed LEVEL or pair
    sys.exit(f"native_pairs.py: error: {type(e).__name__}: {e}\n{__doc__.splitlines()[-1]}")
cells, cache = {}, {}  # (policy, level) -> {(model_seed, problem): correct}; -> mean caches of its records
for r in records:
    key = (r["policy"], level if r["policy"] == "full" else r.get("fraction"))
    cells.setdefault(key, {})[(r.get("model_seed", 0), r["problem"])] = r["correct"]
    cache.setdefault(key, []).append(r["mean_kv"])
missing = sorted({cell for pair_ in pairs for cell in pair_} - cells.keys())
if missing and not present_only:
    sys.exit(f"native_pairs.py: error: no records of {missing[0][0]} at {missing[0][1]} in {path}")
pairs = [(a, b) for a, b in pairs if a in cells and b in cells]


def pair(a, b):
    keys = sorted(cells[a].keys() & cells[b].keys())
    if not keys:
        return f"| {a[0]} | {b[0]} | 0 | | | | | |"
    x, y = [cells[a][k] for k in keys], [cells[b][k] for k in keys]
    only_a = sum(u and not v for u, v in zip(x, y))
    only_b = sum(v and not u for u, v in zip(x, y))
    name = lambda c: c[0] if c[1] == level else f"{c[0]} at {c[1]:.1%}"
    seeds = paired_by_seed({k: cells[a][k] for k in keys}, {k: cells[b][k] for k in keys})
    per_seed = "; ".join(f"{100 * t['a']:.0f} vs {100 * t['b']:.0f}, p = {t['p_value']:.2g}" for t in seeds) \
        if len(seeds) > 1 else ""
    return (f"| {name(a)} | {name(b)} | {len(keys)} | {100 * sum(x) / len(keys):.1f} | {100 * sum(y) / len(keys):.1f} | "
            f"{only_a} / {only_b} | {mcnemar(x, y):.2g} | {per_seed} |")


print(f"At {level:.0%} of Full's validation peak; mean cache per policy (tokens): "
      + ", ".join(f"{p}{'' if lv == level else f' at {lv:.1%}'} {sum(v) / len(v):.0f}"
                  for (p, lv), v in sorted(cache.items(), key=str)) + "\n")
print("| a | b | pairs | a Pass@1 % | b Pass@1 % | only a / only b right | McNemar p | per seed |")
print("|---|---|---|---|---|---|---|---|")
for official in ("h2o", "snapkv", "rkv", "h2o+p", "snapkv+p", "rkv+p"):
    native = official.replace("+p", "") + "-native" + ("+p" if official.endswith("+p") else "")
    if (official, level) in cells and (native, level) in cells:
        print(pair((native, level), (official, level)))
for name, lv in sorted(cells, key=str):
    if "native" in name and lv == level and ("dynts", level) in cells:
        print(pair(("dynts", level), (name, level)))
for a, b in pairs:
    print(pair(a, b))
