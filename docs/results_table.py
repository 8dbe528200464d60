"""docs/RESULTS.md's tables from a merged eval.py JSON: `python docs/results_table.py RESULTS.json[.gz]`.

Prints (markdown) Pass@1 per policy and budget level, pooled over the model seeds and problems, with
the 95% interval that counts seeds and problems as two levels (a crossed bootstrap, lab/stats.py)
and each seed's Pass@1; Full's row; the per-family table at one level (default 0.3), with each
policy's peak and mean cache; the paired tests of DynTS against the best baseline and the lexical
control, pooled and per seed; and, in the paper's regime, the comparison issue's targets, each met
or not. Nothing is computed here that eval.py's records do not hold: this only lays it out.
"""
import gzip
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lab.stats import percent  # noqa: E402 (a budget level as eval.py's tables write it)

ORDER = ["oracle", "dynts", "lexical", "dynts-random", "dynts-buffer",
         "rkv+p", "rkv-native+p", "rkv-native-cut+p", "rkv-buffer+p", "snapkv+p", "snapkv-native+p", "h2o+p",
         "h2o-native+p", "h2o-last+p", "sepllm+p", "streaming+p", "window+p",
         "rkv", "rkv-native", "rkv-native-cut", "rkv-buffer", "snapkv", "snapkv-native",
         "h2o", "h2o-native", "h2o-last", "sepllm", "streaming", "window",
         "dynts-bottom", "dynts-noprompt", "random-all", "bottom-all", "noquestion"]


def cell(r):
    lo, hi = r.get("ci_crossed", r["ci"])
    seeds = " (" + " / ".join(f"{100 * s['pass_at_1']:.0f}" for s in r["per_seed"].values()) + ")" \
        if r.get("per_seed") and len(r["per_seed"]) > 1 else ""
    return f"{100 * r['pass_at_1']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]{seeds}"


def main(path, family_level=0.3):
    with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
        result = json.load(f)
    rows = result["rows"]
    levels = sorted({r["level"] for r in rows if r["level"] is not None})
    full = next((r for r in rows if r["policy"] == "full"), None)  # (None: a run of the other policies alone)
    if full:
        print(f"Full: {cell(full)}, items {100 * full['items']:.1f}%, mean peak cache {full['peak_kv']:.0f} tokens\n")
    peak = {lv: next(r["peak_kv"] for r in rows if r["level"] == lv) for lv in levels}
    print("| policy | " + " | ".join(f"{percent(lv)} ({peak[lv]:.0f})" for lv in levels) + " |")
    print("|---" * (len(levels) + 1) + "|")
    for name in ORDER:
        got = {r["level"]: r for r in rows if r["policy"] == name}
        if got:
            print(f"| {name} | " + " | ".join(cell(got[lv]) if lv in got else "" for lv in levels) + " |")
    fams = list(rows[0]["families"])
    seeds = sorted({r.get("model_seed", 0) for r in result.get("records", [])})
    over = f"seed {seeds[0]} only" if len(seeds) == 1 else "pooled over seeds"
    print(f"\nPer family at {percent(family_level)} (Pass@1 %, {over}), and the cache each policy held: its peak "
          "and its mean over the decode (tokens; the native baselines evict on their own schedules):\n")
    print("| policy | " + " | ".join(fams) + " | peak cache | mean cache |")
    print("|---" * (len(fams) + 3) + "|")
    for name in ["full"] + ORDER:
        r = full if name == "full" else next((r for r in rows if r["policy"] == name and r["level"] == family_level), None)
        if r:
            print(f"| {name} | " + " | ".join(f"{100 * r['families'][f]:.0f}" for f in fams)
                  + f" | {r['peak_kv']:.0f} | {r['mean_kv']:.0f} |")
    print()
    for t in result["paired_tests"]:
        on = "" if t["families"] == "all" else f" ({t['families']} only)"
        seeds = "; per seed: " + ", ".join(f"{100 * u['a']:.0f} vs {100 * u['b']:.0f}, p = {u['p_value']:.2g}"
                                           for u in t["per_seed"]) if len(t["per_seed"]) > 1 else ""
        print(f"- at {percent(t['level'])}{on}: DynTS {100 * t['dynts']:.1f}% vs {t['rival']} {100 * t['rival_pass']:.1f}% "
              f"on {t['n_pairs']} pairs, McNemar p = {t['p_value']:.2g}{seeds}")
    if full and "decoy" in fams and any(r["policy"] == "lexical" for r in rows):  # the paper's regime
        targets(result, family_level)


def targets(result, level=0.3):
    """The comparison issue's targets, each met or not, from the per-problem records: DynTS within 2
    points of Full, pooled; `lexical` at least 20 points below Full on each new family (else the
    family does not test anticipation); DynTS above `lexical` on the decoy families with p < 0.01
    on every seed. Full is counted on the seeds the policy it is compared with ran on."""
    def rate(policy, lv, families=None, seeds=None):
        got = [r["correct"] for r in result["records"] if r["policy"] == policy and r["fraction"] in (lv, None)
               and (families is None or r["family"] in families) and (seeds is None or r["model_seed"] in seeds)]
        return sum(got) / len(got) if got else float("nan")
    seeds_of = lambda policy: {r["model_seed"] for r in result["records"] if r["policy"] == policy and r["fraction"] == level}
    verdict = lambda ok: "met" if ok else "NOT met"
    full, dynts = rate("full", None, seeds=seeds_of("dynts")), rate("dynts", level)
    print(f"\nTargets at {percent(level)}:\n")
    print(f"- DynTS within 2 points of Full, pooled: Full {100 * full:.1f}%, DynTS {100 * dynts:.1f}% "
          f"({100 * (dynts - full):+.1f}): {verdict(full - dynts <= 0.02)}")
    for family in ("decoy", "mixed"):  # the families where statements in the template are not all needed
        f, lex = rate("full", None, [family], seeds_of("lexical")), rate("lexical", level, [family])
        print(f"- `lexical` at least 20 points below Full on {family}: Full {100 * f:.1f}%, lexical {100 * lex:.1f}% "
              f"({100 * (lex - f):+.1f}): {verdict(f - lex >= 0.20)}")
    for t in result["paired_tests"]:
        if t["rival"] == "lexical" and t["families"] == "decoy,mixed" and t["level"] == level:
            seeds = ", ".join(f"seed {u['model_seed']}: {100 * u['a']:.0f} vs {100 * u['b']:.0f}, p = {u['p_value']:.2g}"
                              for u in t["per_seed"])
            ok = all(u["a"] > u["b"] and u["p_value"] < 0.01 for u in t["per_seed"])
            print(f"- DynTS above `lexical` on {t['families']} with p < 0.01 on every seed ({seeds}): {verdict(ok)}")


if __name__ == "__main__":
    main(*sys.argv[1:2], *[float(a) for a in sys.argv[2:3]])
