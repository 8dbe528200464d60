"""Each native baseline against its official form, and each against DynTS, paired on the problems
both decoded: Pass@1 of each, the pairs where only one was right, McNemar's exact p (pooled over
the model seeds in the records), and each policy's mean cache. Reads eval.py --json or --merge output.
usage: python docs/next/native_pairs.py RESULTS.json[.gz] [LEVEL]   (LEVEL: the budget fraction, default 0.3)"""

import gzip
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from lab.stats import mcnemar  # noqa: E402

if len(sys.argv) not in (2, 3):
    sys.exit(__doc__.splitlines()[-1])
path, level = sys.argv[1], float(sys.argv[2]) if len(sys.argv) == 3 else 0.3
try:
    with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
        records = json.load(f)["records"]
except (OSError, ValueError, KeyError) as e:  # no such file, not JSON, no records
    sys.exit(f"native_pairs.py: error: {type(e).__name__}: {e}")
cells, cache = {}, {}  # policy -> {(model_seed, problem): correct}; policy -> mean cache over its records
for r in records:
    if r["policy"] == "full" or r.get("fraction") == level:
        cells.setdefault(r["policy"], {})[(r.get("model_seed", 0), r["problem"])] = r["correct"]
        cache.setdefault(r["policy"], []).append(r["mean_kv"])


def pair(a, b):
    keys = sorted(cells[a].keys() & cells[b].keys())
    x, y = [cells[a][k] for k in keys], [cells[b][k] for k in keys]
    only_a = sum(u and not v for u, v in zip(x, y))
    only_b = sum(v and not u for u, v in zip(x, y))
    return (f"| {a} | {b} | {len(keys)} | {100 * sum(x) / len(keys):.1f} | {100 * sum(y) / len(keys):.1f} | "
            f"{only_a} / {only_b} | {mcnemar(x, y):.2g} |")


print(f"At {level:.0%} of Full's validation peak; mean cache per policy (tokens): "
      + ", ".join(f"{p} {sum(v) / len(v):.0f}" for p, v in sorted(cache.items())) + "\n")
print("| a | b | pairs | a Pass@1 % | b Pass@1 % | only a / only b right | McNemar p |")
print("|---|---|---|---|---|---|---|")
for official in ("h2o", "snapkv", "rkv", "h2o+p", "snapkv+p", "rkv+p"):
    native = official.replace("+p", "") + "-native" + ("+p" if official.endswith("+p") else "")
    if official in cells and native in cells:
        print(pair(native, official))
for name in sorted(cells):
    if "native" in name and "dynts" in cells:
        print(pair("dynts", name))
