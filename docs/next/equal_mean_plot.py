"""Pass@1 against the mean KV cache held over the decode, for the policies that ran at more than one
level on all three seeds (DynTS, R-KV's native form, DynTS's scores on R-KV's schedule), beside H2O's
native form, the lexical control and Full: pooled over the seeds (a crossed bootstrap over seeds and
problems) and seed by seed (Wilson intervals over the 504 problems).

A policy's budget fixes its peak cache, but R-KV's schedule and H2O's step-by-step eviction hold
more on average than DynTS's one cut; plotting against the mean compares them at equal memory.
usage: python docs/next/equal_mean_plot.py RESULTS.json.gz OUT.png"""

import gzip
import json
import os
import sys

sys.path.insert(0, ".")
from lab.eval import summarize  # noqa: E402

SHOWN = {  # policy: (label, colour, marker)
    "dynts": ("DynTS", "tab:green", "o"),
    "rkv-native+p": ("rkv-native+p (R-KV native)", "tab:purple", "s"),
    "dynts-buffer": ("dynts-buffer (DynTS's scores, R-KV's schedule)", "tab:olive", "D"),
    "h2o-native+p": ("h2o-native+p (H2O native)", "tab:pink", "^"),
    "lexical": ("lexical (control)", "tab:blue", "v"),
}


def points(rows, policy):
    """(mean cache, Pass@1 %, low, high, level) at each of a policy's levels, from eval.summarize's rows
    (its crossed interval is a Wilson interval where the rows hold one seed)."""
    rs = sorted((r for r in rows if r["policy"] == policy), key=lambda r: r["mean_kv"])
    return [(r["mean_kv"], 100 * r["pass_at_1"], 100 * r["ci_crossed"][0], 100 * r["ci_crossed"][1], r["level"])
            for r in rs]


def main(path, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    try:
        records = json.load(gzip.open(path, "rt") if path.endswith(".gz") else open(path))["records"]
    except (OSError, ValueError, KeyError) as e:  # no such file, not JSON, no records
        sys.exit(f"equal_mean_plot.py: error: {path}: {type(e).__name__}: {e}")
    if not os.path.isdir(os.path.dirname(out) or "."):
        sys.exit(f"equal_mean_plot.py: error: OUT.png {out}: no such folder")
    panels = [(summarize(records), "pooled over three seeds")]
    panels += [(summarize([r for r in records if r["model_seed"] == s]), f"seed {s}") for s in (0, 1, 2)]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5), sharey=True, sharex=True)
    axes = axes.flatten()
    for ax, (rows, title) in zip(axes, panels):
        full = points(rows, "full")[0]
        ax.axhline(full[1], color="black", ls="--", lw=1, label=f"Full (mean cache {full[0]:,.0f})")
        for policy, (label, colour, marker) in SHOWN.items():
            pts = points(rows, policy)
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            errs = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
            ax.errorbar(xs, ys, yerr=errs, color=colour, marker=marker, capsize=3, lw=2 if policy == "dynts" else 1.2,
                        label=label)
            for x, y, *_, level in pts:
                below = policy in ("dynts", "lexical")  # the others' labels go above their points
                ax.annotate(f"{100 * level:g}%", (x, y), textcoords="offset points", xytext=(5, -12 if below else 6),
                            fontsize=8, color=colour)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[2:]:
        ax.set_xlabel("mean KV cache over the decode (tokens per problem)")
    for ax in axes[::2]:
        ax.set_ylabel("Pass@1 (%)")
    axes[0].set_ylim(0, 100)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=10, frameon=False)
    fig.suptitle("Pass@1 against the mean cache: each point is one budget (its % of Full's validation peak),\n"
                 "504 test problems a seed", fontsize=12)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python docs/next/equal_mean_plot.py RESULTS.json.gz OUT.png")
    main(*sys.argv[1:])
