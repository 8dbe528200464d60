"""Compare KV-cache policies on held-out problems: `python -m lab.eval`.

The paper's comparison in miniature: every policy decodes the same held-out problems (n per
family of task.py) with the same model, budgets, window and ratio, at the checkpoint's
temperature (greedily for the short-trace checkpoint) with the same random numbers for every
policy, so Pass@1 is the fraction solved. The budgets are the checkpoint's, chosen on validation problems by train.py
(fractions of Full's peak cache there), with the paper's window 0.4 x budget and ratio 0.3.

Reported per policy and budget: Pass@1 with a 95% interval (lab/stats.py: over seeds and
problems as two levels when several model seeds pool), each seed's Pass@1, the accuracy per
answer item, Pass@1 per family, the KV cache's peak and mean length; paired tests (McNemar's,
exact, pooled and per seed) of DynTS against the best baseline and the lexical control at each
budget. `--merge` pools the per-problem records of several runs (model seeds, or workers that
split the policies). `--plot` draws Pass@1 against the KV budget, pooled and per family. Ctrl-C keeps the
records of the policies decoded in full (where --json writes) and says how to --merge the rest.

`--hf DIR --problems FILE.jsonl` runs the same comparison on a real model from disk (hf.py) and
your questions, graded by the final answer; DynTS with the predictor `python -m lab.train --hf` wrote.
"""

import argparse
import gzip
import json
import math
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch

import dynts
from lab import hf
from lab import task
from lab import train
from lab.stats import crossed_bootstrap, mcnemar, paired_by_seed, percent, wilson
from lab.cli import (UsageError, cache_bytes, check_matplotlib, check_memory, check_output_path, check_seed,
                     exit_interrupted, resolve_device, run_cli)
from generate import generate
from lab.checkpoint import DEFAULT_CKPT, load_checkpoint, load_hf_weights, load_predictor
from lab.checkpoint import open_hf as generate_open_hf
from lab.policies import (ABLATIONS, BASELINES, NAMES, NATIVE, SCHEDULES, make_policy, needs_attention, needs_predictor,
                          uses_ratio)
from model import END_THINK, KVCache, get_encoding

REFERENCES = ["oracle", "lexical", "dynts-random"]  # true labels; the task's template; random thinking tokens
POLICY_SETS = {
    "all": ["full", "dynts"] + REFERENCES + [c.name for c in BASELINES] + [c.name + "+p" for c in BASELINES]
           + [c.name for c in NATIVE] + [c.name + "+p" for c in NATIVE]
           + [c.name for c in SCHEDULES] + [c.name + "+p" for c in SCHEDULES]
           + [c.name for c in ABLATIONS if c.name not in REFERENCES],
    "default": ["full", "dynts"],  # the CPU default, about a minute
}


class AnswerOracle(dynts.DynTS):
    """The upper reference: DynTS with the true labels in place of the predicted ones. At each
    eviction, `</think>` and the correct answer are run, teacher-forced, after a copy of the
    live cache, and each slot is ranked by the attention that answer pays it (the paper's label,
    on the cache as it is now). It knows the answer: a ceiling for selection, not a method."""

    name = "oracle"

    def __init__(self, budget, window, ratio, model, answers: list[list[int]], prompt_len: int, end_think_id, eot_id):
        super().__init__(budget, window, ratio, prompt_len, None, end_think_id, eot_id)
        self.model, self.answers = model, answers  # one row's ids: </think> and its answer

    def predict(self, hidden):
        return torch.zeros(hidden.shape[:2], device=hidden.device)

    def eviction_scores(self, cache):
        L, recorded = self.length, self.scores[:, :self.length]
        attention = torch.zeros_like(recorded)
        for A in sorted({len(a) for a in self.answers}):  # the rows whose answers have A tokens, as one batch
            rows = [b for b, a in enumerate(self.answers) if len(a) == A]
            look = KVCache(self.model.config, len(rows), L + A, device=cache.kv.device, dtype=cache.kv.dtype)
            look.kv[:, :, :, :, :L] = cache.kv[:, :, rows, :, :L]
            look.pos[:, :L] = cache.pos[rows, :L]
            look.length, look.seen = L, min(cache.seen, self.model.config.block_size - A)  # (the last positions)
            ids = torch.tensor([self.answers[b] for b in rows], device=cache.kv.device)
            _, _, received = self.model(ids, look, need_attention=True)  # (n_layer, rows, Hkv, L + A)
            attention[rows] = received.mean(dim=(0, 2))[:, :L].float()
        fixed = recorded.isinf() | (recorded == dynts.ANSWER)  # the prompt, the answer and padding, as DynTS has them
        return torch.where(fixed, recorded, attention)


@dataclass
class Case:
    """One problem as run_policy decodes it: the prompt's ids, its family, and how to grade what
    the model wrote after the prompt: text -> (correct, the share of answer items right)."""
    prompt: list[int]
    family: str
    grade: Callable[[str], tuple[bool, float]]
    answer: list[int] | None = None  # `</think>` and the correct answer's ids: the oracle's labels


def task_cases(problems: list[task.Problem], enc) -> list[Case]:
    """The tiny reasoner's problems: graded by task.py (exact answer, and per item)."""
    grade = lambda p: lambda text: (task.check_answer(p, text), task.item_accuracy(p, text))
    return [Case(enc.encode(p.prompt, allowed_special="all"), p.family, grade(p),
                 enc.encode(END_THINK + p.answer, allowed_special="all")) for p in problems]


def hf_cases(problems: list[dict], enc, meta: dict) -> list[Case]:
    """A real model's problems (train.read_problems): each question in its chat format, graded by
    the final answer after `</think>` (train.final_answer: the last \\boxed{}) against the answer."""
    def grade(answer):
        def check(text):
            after = text.split(END_THINK, 1)[1] if END_THINK in text else None  # no answer without </think>
            ok = after is not None and train.final_answer(after.replace(meta["eos"], "")) == answer.strip()
            return ok, float(ok)
        return check
    return [Case(hf.chat_prompt(p["question"], enc, meta["bos"]), "all", grade(p["answer"])) for p in problems]


@torch.no_grad()
def run_policy(name, model, predictor, cases: list[Case], budget, window, ratio, batch_size, enc, max_new_tokens=None,
               eot_id=None, end_think_id=None, cuda_graphs=False, temperature=0.0, seed=0) -> list[dict]:
    """Decode `cases` under one policy: one record per problem, in the cases' order (correct,
    item accuracy, the cache's peak and mean length over the forwards). Prompts of one length
    share a batch (generate.generate). End-of-text and `</think>`: the byte encoding's unless
    given (a real model's). `cuda_graphs`: the fast path (lab/fastpath.py) for the policies
    that need no attention weights. `temperature` > 0 samples, each batch from a generator seeded
    by `seed` and the batch, so that every policy draws the same random numbers on a problem."""
    eot_id = enc.eot_token if eot_id is None else eot_id
    end_think_id = enc.encode_single_token(END_THINK) if end_think_id is None else end_think_id
    records = [None] * len(cases)
    for batch in batches_by_length(cases, batch_size):
        P = len(cases[batch[0]].prompt)
        if name == "oracle":
            policy = AnswerOracle(budget, window, ratio, model, [cases[i].answer for i in batch], P, end_think_id,
                                  eot_id)
        else:
            policy = make_policy(name, budget, window, ratio, P, predictor, enc, end_think_id, eot_id)
        lengths = []  # after each forward: the slots that step attended to
        on_step = lambda cache, eviction: lengths.append(cache.length if eviction is None else eviction[1].shape[1])
        steps = model.config.block_size - P if max_new_tokens is None else max_new_tokens
        generator = torch.Generator(device=model.wte.weight.device).manual_seed(1_000_003 * seed + batch[0])
        tokens, stats = generate(model, [cases[i].prompt for i in batch], policy, steps, eot_id=eot_id,
                                 vocab_limit=enc.n_vocab, on_step=on_step, check_every=32,
                                 temperature=temperature, generator=generator,
                                 cuda_graphs=cuda_graphs and not policy.needs_attention)
        for i, row in zip(batch, tokens.tolist()):
            n = row.index(eot_id) + 1 if eot_id in row else len(row)  # this row's own tokens
            correct, items = cases[i].grade(enc.decode(row[:n]))
            records[i] = dict(policy=name, budget=budget, family=cases[i].family, correct=correct, items=items,
                              peak_kv=max(lengths[:n]), mean_kv=sum(lengths[:n]) / n,
                              seconds=stats["seconds"] / len(batch))  # the batch's time, shared among its rows
    return records


def batches_by_length(cases: list[Case], batch_size: int) -> list[list[int]]:
    """The cases' indices in batches of at most batch_size, each of prompts of one length."""
    by_length = defaultdict(list)
    for i, c in enumerate(cases):
        by_length[len(c.prompt)].append(i)
    return [group[a:a + batch_size] for group in by_length.values() for a in range(0, len(group), batch_size)]


# -----------------------------------------------------------------------------
# Statistics


def level_of(record: dict):
    """A record's budget level: the budget fraction when the run chose budgets on validation
    (so seeds whose budgets differ by a few tokens pool), else the budget itself (None: Full)."""
    return record.get("fraction") or record["budget"]


def outcomes(records: list[dict]) -> dict:
    """{(policy, level): {(model_seed, problem): correct}}: each cell's outcomes, ready to pair."""
    cells = defaultdict(dict)
    for r in records:
        cells[(r["policy"], level_of(r))][(r.get("model_seed", 0), r["problem"])] = r["correct"]
    return cells


def summarize(records: list[dict]) -> list[dict]:
    """One row per (policy, budget level): pooled over problems and model seeds. `ci` is the
    pooled pairs' Wilson interval, `ci_crossed` the interval that counts seeds and problems as
    the two levels they are (lab/stats.py), `per_seed` each seed's Pass@1 and Wilson interval."""
    cells = defaultdict(list)
    for r in records:
        cells[(r["policy"], level_of(r))].append(r)
    by_cell = outcomes(records)
    rows = []
    for (policy, level), rs in cells.items():
        k, n = sum(r["correct"] for r in rs), len(rs)
        by_seed = defaultdict(list)
        for r in rs:
            by_seed[r.get("model_seed", 0)].append(r["correct"])
        per_seed = {s: dict(pass_at_1=sum(v) / len(v), ci=wilson(sum(v), len(v)), n=len(v))
                    for s, v in sorted(by_seed.items())}
        seed_means = [sum(v) / len(v) for v in by_seed.values()]
        mean = sum(seed_means) / len(seed_means)
        sd = math.sqrt(sum((m - mean) ** 2 for m in seed_means) / (len(seed_means) - 1)) if len(seed_means) > 1 else 0.0
        family_n = {f: sum(r["family"] == f for r in rs) for f in task.FAMILIES if any(r["family"] == f for r in rs)}
        families = {f: sum(r["correct"] for r in rs if r["family"] == f) / family_n[f] for f in family_n}
        crossed = crossed_bootstrap(by_cell[(policy, level)]) if len(by_seed) > 1 else wilson(k, n)
        rows.append(dict(policy=policy, level=level, budget=sorted({r["budget"] for r in rs}, key=str), n=n,
                         pass_at_1=k / n, ci=wilson(k, n), ci_crossed=crossed, per_seed=per_seed, seed_sd=sd,
                         n_seeds=len(seed_means),
                         items=sum(r["items"] for r in rs) / n, families=families, family_n=family_n,
                         peak_kv=sum(r["peak_kv"] for r in rs) / n, mean_kv=sum(r["mean_kv"] for r in rs) / n))
    order = {name: i for i, name in enumerate(NAMES + ["oracle"])}
    return sorted(rows, key=lambda r: (r["level"] is not None, r["level"] or 0, order.get(r["policy"], 99)))


DECOY_FAMILIES = ("decoy", "mixed")  # where statements in the template are not all needed


def paired_tests(records: list[dict], rows: list[dict]) -> list[dict]:
    """At each budget level, DynTS against its rivals on the (model seed, problem) pairs both
    decoded: the baseline with the highest Pass@1 there, the lexical control (on every problem,
    then on the decoy families and on the ordinary ones apart), and Full. McNemar's exact test,
    pooled and per seed."""
    cells, family = outcomes(records), {(r.get("model_seed", 0), r["problem"]): r["family"] for r in records}
    tests = []
    for level in sorted({r["level"] for r in rows if r["policy"] == "dynts"}):
        baselines = [r for r in rows if r["level"] == level and r["policy"].removesuffix("+p") in
                     [c.name for c in BASELINES]]
        rivals = [(max(baselines, key=lambda r: r["pass_at_1"])["policy"], None)] if baselines else []
        if ("lexical", level) in cells:
            rivals += [("lexical", None)]
            present = set(family.values())
            if present & set(DECOY_FAMILIES):
                ordinary = tuple(f for f in task.FAMILIES if f in present and f not in DECOY_FAMILIES)
                rivals += [("lexical", DECOY_FAMILIES), ("lexical", ordinary)]
        rivals += [("full", None)] * (("full", None) in cells)
        for rival, families in rivals:
            a, b = cells[("dynts", level)], cells[(rival, None if rival == "full" else level)]
            keys = sorted(k for k in a.keys() & b.keys() if families is None or family[k] in families)
            if not keys:  # (a rival run on other seeds or problems)
                continue
            tests.append(dict(level=level, rival=rival, families="all" if families is None else ",".join(families),
                              n_pairs=len(keys), dynts=sum(a[k] for k in keys) / len(keys),
                              rival_pass=sum(b[k] for k in keys) / len(keys),
                              p_value=mcnemar([a[k] for k in keys], [b[k] for k in keys]),
                              per_seed=paired_by_seed({k: a[k] for k in keys}, {k: b[k] for k in keys})))
    return tests


def table(rows: list[dict]) -> str:
    full = next((r for r in rows if r["policy"] == "full"), None)
    families = [f for f in task.FAMILIES if any(f in r["families"] for r in rows)]
    width = max([16] + [len(r["policy"]) for r in rows])  # the name column fits the longest name
    head = f"{'policy':<{width}} {'budget':>10} {'Pass@1 [95% CI]':>22} {'seeds sd':>8} {'items':>6} {'peak KV':>8} {'comp.':>6}  " + \
           " ".join(f"{f:>9}" for f in families)
    lines = [head]
    for r in rows:
        level = "-" if r["level"] is None else (percent(r["level"]) if isinstance(r["level"], float) else str(r["level"]))
        comp = f"{full['peak_kv'] / r['peak_kv']:.2f}x" if full else "-"
        ci = f"{r['pass_at_1']:.1%} [{r['ci_crossed'][0]:.1%}, {r['ci_crossed'][1]:.1%}]"  # seeds and problems
        fams = " ".join(f"{r['families'][f]:>9.1%}" if f in r["families"] else f"{'':>9}" for f in families)
        lines.append(f"{r['policy']:<{width}} {level:>10} {ci:>22} {r['seed_sd']:>8.1%} {r['items']:>6.1%} "
                     f"{r['peak_kv']:>8.0f} {comp:>6}  {fams}")
    return "\n".join(lines)


PLOT_COLORS = {"oracle": "C1", "dynts": "C2", "dynts-random": "C7", "lexical": "C0", "rkv": "C4", "snapkv": "C5", "h2o": "C6",
               "sepllm": "C9", "streaming": "C8", "window": "C3"}  # plot(): a colour per rule, +p or not


def plot_order(rows: list[dict]) -> list[str]:
    """The policies plot() draws, in its legend's order: the main ones, then any other (an ablation,
    your own) in the order of the rows."""
    main = ["full", "oracle", "dynts", "lexical", "dynts-random", "rkv+p", "snapkv+p", "h2o+p", "h2o", "rkv", "snapkv",
            "rkv-native+p", "snapkv-native+p", "h2o-native+p", "rkv-native", "snapkv-native", "h2o-native",
            "sepllm+p", "sepllm", "window+p", "streaming", "window"]
    present = list(dict.fromkeys(r["policy"] for r in rows))
    return [n for n in main if n in present] + [n for n in present if n not in main]


def plot(rows: list[dict], path: str):
    """Pass@1 against the mean peak KV cache, a line per policy with its 95% interval: pooled, and
    one panel per family; and pooled against the mean cache over the decode, where the policies that
    evict on their own schedules (the native baselines) differ from their peak. Policies that share a
    peak are nudged apart along it by under 1% of the axis, so that their intervals show."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = plot_order(rows)
    panels = ["pooled", "mean"] + [f for f in task.FAMILIES if any(f in r["families"] for r in rows)]  # (--hf: pooled only)
    cols = min(3, len(panels))
    fig, axes = plt.subplots(-(-len(panels) // cols), cols, figsize=(5 * cols, 4.25 * -(-len(panels) // cols)),
                             sharey=True, squeeze=False)
    peaks = [r["peak_kv"] for r in rows if r["policy"] != "full"]
    span = max(max(peaks) - min(peaks), 0.2 * max(peaks))  # at least +-10%: one budget is not zoomed to a token
    nudge = 0.006 * span  # policies at one peak drawn side by side
    for ax, panel in zip(axes.flat, panels):
        cache = "mean_kv" if panel == "mean" else "peak_kv"
        for i, name in enumerate(names):
            rs = sorted((r for r in rows if r["policy"] == name), key=lambda r: r[cache])
            if name == "full":
                x = rs[0]["peak_kv"]
                y = rs[0]["pass_at_1"] if panel in ("pooled", "mean") else rs[0]["families"][panel]
                ax.axhline(100 * y, color="black", ls="--", lw=1, label=f"full (mean peak {x:.0f} tokens)")
                continue
            offset = (i - len(names) / 2) * nudge
            shared = lambda r: sum(abs(r["peak_kv"] - q) < nudge for q in peaks) > 1  # another policy at this peak
            x = [r[cache] + (offset if panel != "mean" and shared(r) else 0) for r in rs]
            if panel in ("pooled", "mean"):
                y = [100 * r["pass_at_1"] for r in rs]
                lo, hi = zip(*[(100 * r["ci_crossed"][0], 100 * r["ci_crossed"][1]) for r in rs])
            else:
                y = [100 * r["families"][panel] for r in rs]
                cis = [wilson(round(r["families"][panel] * r["family_n"][panel]), r["family_n"][panel]) for r in rs]
                lo, hi = zip(*[(100 * a, 100 * b) for a, b in cis])
            # one colour per rule, a variant its rule's (squares: as its own paper runs it, per head;
            # diamonds: R-KV's scores and schedule swapped); the references dotted, solid with the
            # prompt protected (+p, and DynTS), dashed without
            base = name.removesuffix("+p")
            color = PLOT_COLORS.get(base) or PLOT_COLORS.get(base.split("-")[0], "C7")
            if base in ("oracle", "dynts-random", "lexical"):
                ls = ":"
            else:
                ls = "-" if base == "dynts" or name != base else "--"
            marker = "D" if base.endswith(("-cut", "-buffer")) else "s" if base.endswith("-native") else "o"
            ax.plot(x, y, label=name, marker=marker, ms=4,
                    lw=2.4 if base in ("dynts", "oracle") else 1.2, ls=ls, color=color)
            ax.fill_between(x, lo, hi, alpha=0.12, color=color)
            ax.errorbar(x, y, yerr=[[max(a - b, 0) for a, b in zip(y, lo)], [max(b - a, 0) for a, b in zip(y, hi)]], fmt="none",
                        ecolor=color, elinewidth=1, capsize=2)  # a level alone has no band to show its interval
        ax.set_title({"pooled": "pooled", "mean": "pooled, against the mean cache"}.get(panel, f"family: {panel}"))
        ax.set_ylim(-3, 103)
        mid = sum(ax.get_xlim()) / 2
        ax.set_xlim(min(ax.get_xlim()[0], mid - span / 2), max(ax.get_xlim()[1], mid + span / 2))
        ax.grid(alpha=0.3)
        ax.set_xlabel(("mean KV cache over the decode" if panel == "mean" else "mean peak KV cache")
                      + " (tokens per problem)")
    for ax in axes[:, 0]:
        ax.set_ylabel("Pass@1 (%)")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=8, fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def report(records: list[dict]) -> dict:
    rows = summarize(records)
    tests = paired_tests(records, rows)
    print("\n" + table(rows))
    for t in tests:
        level = f"{percent(t['level'])} of Full's cache" if isinstance(t["level"], float) else f"budget {t['level']}"
        on = "" if t["families"] == "all" else f" on {t['families']}"
        seeds = "; per seed p = " + ", ".join(f"{u['p_value']:.2g}" for u in t["per_seed"]) if len(t["per_seed"]) > 1 else ""
        print(f"at {level}{on}: dynts {t['dynts']:.1%} vs {t['rival']} {t['rival_pass']:.1%} on {t['n_pairs']} pairs: "
              f"McNemar p = {t['p_value']:.2g}{seeds}")
    return dict(rows=rows, paired_tests=tests)


# -----------------------------------------------------------------------------
# Command line


def merged(paths: list[str], policies: str | None) -> dict:
    """The records of earlier --json runs pooled and summarized; with `policies`, only theirs."""
    records, ranking = [], []
    for path in paths:
        try:
            with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
                run = json.load(f)
            records += run["records"]
            ranking += [run["ranking"]] if run.get("ranking") else []
        except (OSError, ValueError, KeyError) as e:
            raise UsageError(f"--merge {path}: not a JSON file written by eval.py --json ({e})") from None
    if policies is not None:
        keep = [name.strip() for name in policies.split(",")]
        missing = [name for name in keep if not any(r["policy"] == name for r in records)]
        if missing:
            raise UsageError(f"--policies: no records of {missing[0]!r} in the --merge files")
        records = [r for r in records if r["policy"] in keep]
    return dict(records=records, ranking=ranking, **report(records))


def main(ckpt=None, n=None, seed=None, policies=None, budget=None, window=None, ratio=None, budgets=None,
         fractions=None, split=None, batch_size=None, device=None, dtype=None, ranking_traces=None, json_path=None,
         plot_path=None, merge=None, hf_dir=None, problems_path=None, predictor_path=None, max_new_tokens=None,
         cuda_graphs=False):
    check_output_path("--json", json_path)
    check_output_path("--plot", plot_path)
    check_matplotlib("--plot", plot_path)
    if ratio is not None and not 0 < ratio <= 1:  # whatever the policies (full alone would ignore it)
        raise UsageError(f"--ratio must be in (0, 1], got {ratio}")
    tiny_only = dict(ckpt="--ckpt", n="--n", seed="--seed", split="--split", fractions="--fractions",
                     ranking_traces="--ranking-traces")
    values = dict(ckpt=ckpt, n=n, seed=seed, split=split, fractions=fractions, ranking_traces=ranking_traces)
    given = [flag for name, flag in tiny_only.items() if values[name] is not None]
    if merge:  # pool earlier runs' records: no decoding
        decoding = {flag: values[name] for name, flag in tiny_only.items()} | {
            "--budget": budget, "--budgets": budgets, "--window": window, "--ratio": ratio, "--batch-size": batch_size,
            "--device": device, "--dtype": dtype, "--cuda-graphs": cuda_graphs or None, "--hf": hf_dir,
            "--problems": problems_path, "--predictor": predictor_path, "--max-new-tokens": max_new_tokens}
        for flag, value in decoding.items():
            if value is not None:
                raise UsageError(f"{flag} is for decoding; --merge only pools earlier runs (with --policies, --json, --plot)")
        return finish(merged(merge, policies), json_path, plot_path)

    levels_given = [flag for flag, value in [("--budget", budget), ("--budgets", budgets), ("--fractions", fractions)]
                    if value is not None]
    if len(levels_given) > 1:  # one would silently win
        raise UsageError(f"{levels_given[0]} and {levels_given[1]}: give one of --budget, --budgets, --fractions")
    if hf_dir is not None:
        if given:
            raise UsageError(f"{given[0]} is for the tiny reasoner's checkpoint; with --hf it would be ignored")
        return main_hf(hf_dir, problems_path, predictor_path, policies, budget, window, ratio, budgets, max_new_tokens,
                       batch_size, device, dtype, json_path, plot_path, cuda_graphs)
    for flag, value in [("--problems", problems_path), ("--predictor", predictor_path),
                        ("--max-new-tokens", max_new_tokens)]:
        if value is not None:
            raise UsageError(f"{flag} is for --hf DIR (a real model); the tiny reasoner does not use it")
    ckpt = DEFAULT_CKPT if ckpt is None else ckpt
    seed = 0 if seed is None else seed
    split = "eval" if split is None else split
    dtype = "float32" if dtype is None else dtype

    device = resolve_device(device)
    cuda = device.startswith("cuda")
    n = n if n is not None else (100 if cuda else 1)
    batch_size = batch_size if batch_size is not None else (500 if cuda else 10)
    ranking_traces = ranking_traces if ranking_traces is not None else (100 if cuda else 4)
    for flag, value, low in [("--n", n, 1), ("--batch-size", batch_size, 1), ("--ranking-traces", ranking_traces, 0)]:
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    if n > 10**4:
        raise UsageError(f"--n {n}: at most 10000 problems per family")
    check_seed(seed)
    for flag, value in [("--budgets", budgets), ("--fractions", fractions)]:
        if value is not None and not value.strip():
            raise UsageError(f"{flag} is empty: give comma-separated values, or leave the flag out")
    names = policy_names(policies, "all" if cuda else "default")
    for name in names:
        if name not in NAMES + REFERENCES:
            raise UsageError(f"--policies: unknown policy {name!r}; choose from {', '.join(NAMES + ['oracle'])}, "
                             f"or a set: {', '.join(POLICY_SETS)}")
    check_graphs(cuda_graphs, device, names)
    fixed = [name for name in names if name != "full" and name not in REFERENCES and not uses_ratio(name)]
    if ratio is not None and fixed:  # a set of policies: the others use it
        print(f"eval.py: note: --ratio {ratio} does not change {', '.join(fixed)} (their own schedules decide)",
              file=sys.stderr)
    model, predictor, meta = load_checkpoint(ckpt)
    model.to(device=device, dtype=getattr(torch, dtype)).eval()
    predictor.to(device=device, dtype=getattr(torch, dtype)).eval()
    enc = get_encoding(meta["encoding"])
    d = meta["decoding"]
    ratio = d["ratio"] if ratio is None else ratio
    # The budget levels: the checkpoint's (chosen on validation) on CUDA, its default budget on the CPU.
    if fractions:
        if "full_peak_valid" not in d:
            raise UsageError(f"--fractions: {ckpt} records no validation peak (train it with this train.py)")
        try:
            levels = [(round(float(f) * d["full_peak_valid"]), float(f)) for f in fractions.split(",")]
        except ValueError:
            raise UsageError(f"--fractions {fractions!r}: give comma-separated numbers, e.g. 0.2,0.3") from None
    elif budgets:
        try:
            levels = [(int(b), None) for b in budgets.split(",")]
        except ValueError:
            raise UsageError(f"--budgets {budgets!r}: give comma-separated integers, e.g. 600,900,1200") from None
    elif budget is not None:
        levels = [(budget, None)]
    elif cuda and "budgets" in d:
        levels = list(zip(d["budgets"], train.BUDGET_FRACTIONS))
    else:
        levels = [(d["budget"], train.BUDGET_FRACTIONS[1] if "budgets" in d else None)]
    window_of = lambda b: window if window is not None else round(d.get("window_fraction", d["window"] / d["budget"]) * b)
    capacity = model.config.block_size if "full" in names else max(b for b, _ in levels)  # the largest cache
    check_memory(f"--batch-size {batch_size} x {capacity} KV slots",
                 cache_bytes(model.config, min(batch_size, n * len(task.families_of(meta["task"]))), capacity,
                             getattr(torch, dtype).itemsize), device)
    problems = [p for f in task.families_of(meta["task"]) for p in task.problems(split, n, seed=seed, family=f,
                                                                                  **meta["task"])]
    cases = task_cases(problems, enc)
    prompt_len = max(len(c.prompt) for c in cases)  # the longest
    for b, _ in levels:
        if b <= prompt_len:
            raise UsageError(f"--budget {b} must exceed the prompt's {prompt_len} tokens")
    runs = [(name, None, None) if name == "full" else (name, b, f) for name in names for b, f in
            ([(None, None)] if name == "full" else levels)]
    for name, b, _ in runs:  # bad settings fail now, not after an hour of decoding
        if name not in ("full", "oracle"):
            make_policy(name, b, window_of(b), ratio, prompt_len, predictor, enc)
    model_seed = meta["metrics"].get("seed", 0)
    records = []
    try:  # Ctrl-C: the policies decoded at every budget are kept
        print(f"{len(problems)} {split} problems ({n} per family, seed {seed}), model seed {model_seed}, "
              f"budgets {[b for b, _ in levels]}, ratio {ratio}, temperature {d.get('temperature', 0.0)}, "
              f"on {device} ({dtype})", flush=True)
        for name, b, f in runs:
            rs = run_policy(name, model, predictor, cases, b, window_of(b) if b else 0, ratio, batch_size, enc,
                            cuda_graphs=cuda_graphs, temperature=d.get("temperature", 0.0), seed=seed)
            for i, r in enumerate(rs):
                r.update(problem=i, fraction=f, model_seed=model_seed, window=window_of(b) if b else None)
            records += rs
            print(table(summarize(rs)).splitlines()[1], flush=True)
        ranking = train.ranking_quality(model, predictor, ranking_traces, device, meta["task"]) if ranking_traces else None
    except KeyboardInterrupt:
        whole = {name: len(cases) * sum(run[0] == name for run in runs) for name in names}
        keep_interrupted(records, whole, json_path, dict(n=n, seed=seed, split=split, device=device, dtype=dtype,
                                                         ckpt=ckpt))
    if ranking:
        print(f"\npredictor on {ranking_traces} validation traces: Spearman {ranking['spearman']:.3f} against the "
              f"labels; first result statements in its top 10%: {ranking['decisive_recall_top10']:.1%}")
    result = dict(records=records, ranking=ranking, n=n, seed=seed, split=split, device=device, dtype=dtype, ckpt=ckpt,
                  **report(records))
    return finish(result, json_path, plot_path)


def main_hf(hf_dir, problems_path, predictor_path, policies, budget, window, ratio, budgets, max_new_tokens, batch_size,
            device, dtype, json_path, plot_path, cuda_graphs=False):
    """The comparison on a real model (a local Hugging Face folder, hf.py) and your problems: every
    policy decodes every question greedily, in the model's chat format, at each budget; a
    problem is solved when the final answer (the last \\boxed{} after `</think>`) is its answer.
    DynTS and the ablations that rank by it need the predictor `python -m lab.train --hf` wrote, whose
    budget, window and ratio are the defaults."""
    if problems_path is None:
        raise UsageError(f"--hf {hf_dir} needs --problems FILE.jsonl (one {{\"question\": ..., \"answer\": ...}} a line)")
    names = policy_names(policies, "default")
    for name in names:
        if name not in NAMES:
            raise UsageError(f"--policies: unknown policy {name!r} for --hf; choose from {', '.join(NAMES)} "
                             "(the oracle needs the model's own correct answer: not with --hf)")
    if predictor_path is None and any(needs_predictor(name) for name in names):
        raise UsageError(f"--policies {','.join(names)} with --hf needs --predictor FILE for DynTS: train one with "
                         f"`python -m lab.train --hf {hf_dir} --problems FILE.jsonl`")
    cases_in = train.read_problems(problems_path)
    config, enc, meta = generate_open_hf(hf_dir)
    predictor, defaults = load_predictor(predictor_path, config) if predictor_path else (None, {})
    d = defaults.get("decoding", {})
    budget = d.get("budget") if budget is None else budget
    window = d.get("window") if window is None else window
    ratio = d.get("ratio", 0.3) if ratio is None else ratio
    if budgets:
        try:
            levels = [int(b) for b in budgets.split(",")]
        except ValueError:
            raise UsageError(f"--budgets {budgets!r}: give comma-separated integers, e.g. 2048,4096") from None
    else:
        levels = [budget]
    if any(name != "full" for name in names) and (None in levels or window is None):
        raise UsageError("--hf: a policy that evicts needs --budget (or --budgets) and --window, or a --predictor "
                         "file that gives them")
    if not 0 < ratio <= 1:
        raise UsageError(f"--ratio must be in (0, 1], got {ratio}")
    cases = hf_cases(cases_in, enc, meta)
    longest = max(len(c.prompt) for c in cases)
    max_new_tokens = min(8192, config.block_size - longest) if max_new_tokens is None else max_new_tokens
    batch_size = 8 if batch_size is None else batch_size
    for flag, value, low in [("--max-new-tokens", max_new_tokens, 1), ("--batch-size", batch_size, 1),
                             ("--window", window, 0)]:
        if value is not None and value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    if longest + max_new_tokens > config.block_size:
        raise UsageError(f"--max-new-tokens {max_new_tokens} plus the longest prompt's {longest} tokens exceeds the "
                         f"model's block_size {config.block_size}")
    for b in levels:
        if b is not None and b <= longest:
            raise UsageError(f"--budget {b} must exceed the longest prompt's {longest} tokens")
    for name in names:  # bad settings fail now, not after the weights are read
        for b in ([None] if name == "full" else levels):
            make_policy(name, b, window, ratio, longest, predictor, enc, meta["end_think_id"], meta["eos_id"])
    device = resolve_device(device)
    check_graphs(cuda_graphs, device, names)
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    capacity = longest + max_new_tokens if "full" in names else max(levels)
    nbytes = cache_bytes(config, min(batch_size, len(cases)), capacity, getattr(torch, dtype).itemsize)
    model = load_hf_weights(hf_dir, config, device, getattr(torch, dtype), also=nbytes).eval()
    if predictor is not None:
        predictor.to(device=device, dtype=getattr(torch, dtype)).eval()
    records = []
    try:  # Ctrl-C: the policies decoded at every budget are kept
        print(f"{len(cases)} problems from {problems_path}, {hf_dir}, budgets {levels}, window {window}, "
              f"ratio {ratio}, up to {max_new_tokens} new tokens, on {device} ({dtype})", flush=True)
        for name in names:
            for b in ([None] if name == "full" else levels):
                rs = run_policy(name, model, predictor, cases, b, window if b else 0, ratio, batch_size, enc,
                                max_new_tokens, meta["eos_id"], meta["end_think_id"], cuda_graphs)
                for i, r in enumerate(rs):
                    r.update(problem=i, fraction=None, model_seed=0, window=window if b else None)
                records += rs
                print(table(summarize(rs)).splitlines()[1], flush=True)
    except KeyboardInterrupt:
        whole = {name: len(cases) * (1 if name == "full" else len(levels)) for name in names}
        keep_interrupted(records, whole, json_path, dict(n=len(cases), split=problems_path, device=device, dtype=dtype,
                                                         ckpt=hf_dir, predictor=predictor_path))
    result = dict(records=records, ranking=None, n=len(cases), split=problems_path, device=device, dtype=dtype,
                  ckpt=hf_dir, predictor=predictor_path, **report(records))
    return finish(result, json_path, plot_path)


def policy_names(policies: str | None, default: str) -> list[str]:
    """--policies as names: a set's, or the comma-separated ones (`default`, a set, if not given).
    An empty or blank name is refused: '' must not run the default set."""
    policies = default if policies is None else policies
    names = POLICY_SETS.get(policies.strip()) or [name.strip() for name in policies.split(",")]
    if "" in names:
        raise UsageError(f"--policies {policies!r}: an empty name; give comma-separated policies or a set "
                         f"({', '.join(POLICY_SETS)}), or leave the flag out")
    return names


def check_graphs(cuda_graphs: bool, device: str, names: list[str]):
    """--cuda-graphs needs CUDA; the policies that score by attention weights run without graphs, and
    the user is told which."""
    if not cuda_graphs:
        return
    if not device.startswith("cuda"):
        raise UsageError(f"--cuda-graphs needs a CUDA device, not {device}")
    plain = [name for name in names if name != "oracle" and needs_attention(name)]
    if plain:
        print(f"eval.py: note: --cuda-graphs: {', '.join(plain)} score by attention weights and run without graphs",
              file=sys.stderr)


def write_json(result: dict, path: str):
    with (gzip.open if path.endswith(".gz") else open)(path, "wt") as f:  # gzipped where the name ends in .gz
        json.dump(result, f)


def finish(result, json_path, plot_path):
    if json_path:
        write_json(result, json_path)
    if plot_path:
        plot(result["rows"], plot_path)
    return result


def keep_interrupted(records: list[dict], whole: dict[str, int], json_path: str | None, about: dict):
    """Ctrl-C while decoding: the records of the policies decoded in full (`whole`: each policy's
    records at every budget) go where --json would write them, or without it to a new file named
    in the line, a file --merge reads; one line on stderr says how to decode the rest and pool
    them; exit status 130. A policy cut short is left out: merged with a whole run of it, its
    problems would count twice."""
    say = lambda message: exit_interrupted("python -m lab.eval", message)
    done = [name for name, n in whole.items() if sum(r["policy"] == name for r in records) == n]
    left = [name for name in whole if name not in done]
    if not done:
        say(f"no policy was decoded in full ({left[0]} was running): nothing to keep")
    kept = [r for r in records if r["policy"] in done]
    path = json_path or f"eval-interrupted-{time.strftime('%Y%m%d-%H%M%S')}.json"
    rows = summarize(kept)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the file short
    try:
        write_json(dict(records=kept, ranking=None, interrupted=True, rows=rows, paired_tests=paired_tests(kept, rows),
                        **about), path)
    except OSError as e:
        say(f"{path}: cannot be written ({e.strerror}); nothing kept")
    finally:
        signal.signal(signal.SIGINT, previous)
    say(f"the records of {','.join(done)} are in {path}; " + (
        f"decode the rest by running it again with --policies {','.join(left)} --json REST.json, then pool both with "
        f"--merge {path} REST.json" if left else f"the predictor's ranking was not finished; --merge {path} reads them"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m lab.eval", description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", help=f"checkpoint from train.py (default: {DEFAULT_CKPT})")
    p.add_argument("--n", type=int, help="held-out problems per family (default: 100 on cuda, 1 on cpu)")
    p.add_argument("--seed", type=int, help="which held-out problems (default: 0)")
    p.add_argument("--split", choices=["eval", "valid"], help="the test problems (default), or the "
                   "validation ones (for choosing settings without looking at the test problems)")
    p.add_argument("--policies", help="comma-separated policies, or a set: 'all' (default on cuda) or 'default' "
                   "(full,dynts; default on cpu)")
    p.add_argument("--budget", type=int, help="one KV budget (default: the checkpoint's, chosen on validation)")
    p.add_argument("--budgets", help="comma-separated budgets instead (default on cuda: the checkpoint's four)")
    p.add_argument("--fractions", help="budgets as fractions of Full's mean peak cache on the checkpoint's "
                   "validation problems, e.g. 0.3 (default on cuda: train.BUDGET_FRACTIONS)")
    p.add_argument("--window", type=int, help="recent tokens always kept (default: 0.4 x each budget)")
    p.add_argument("--ratio", type=float, help="fraction of older tokens kept (default: the checkpoint's, 0.3)")
    p.add_argument("--batch-size", type=int, help="problems decoded together (default: 500 on cuda, 10 on cpu)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when there is one)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="weights and KV cache (default: float32; "
                   "with --hf, bfloat16 on cuda)")
    p.add_argument("--ranking-traces", type=int, help="held-out traces for the predictor's Spearman; 0 skips it "
                   "(default: 100 / 4)")
    p.add_argument("--json", dest="json_path", help="write the per-problem records and the summary as JSON here "
                   "(gzipped if it ends in .gz)")
    p.add_argument("--plot", dest="plot_path", help="PNG of Pass@1 against the KV budget (needs matplotlib)")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="pool the records of earlier --json runs instead of "
                   "decoding (seeds, or workers that split the policies); --policies keeps only those")
    p.add_argument("--cuda-graphs", action="store_true", help="replay each decode step as one CUDA graph "
                   "(fastpath.py); the policies that score by attention weights run without")
    g = p.add_argument_group("a real model: the comparison on a local Hugging Face checkpoint (Llama 3, Qwen2)")
    g.add_argument("--hf", dest="hf_dir", metavar="DIR", help="the checkpoint folder (config.json, *.safetensors, "
                   "tokenizer.json); nothing is downloaded")
    g.add_argument("--problems", dest="problems_path", metavar="FILE", help="a .jsonl file, one {\"question\": ..., "
                   "\"answer\": ...} a line; solved when the last \\boxed{} after </think> is the answer")
    g.add_argument("--predictor", dest="predictor_path", metavar="FILE", help="DynTS's predictor for this model "
                   "(train.py --hf writes one; its budget, window and ratio are the defaults)")
    g.add_argument("--max-new-tokens", type=int, help="the longest answer (default: 8192)")
    return p.parse_args(argv)


def cli(argv=None):
    run_cli("python -m lab.eval", main, parse_args, argv)


if __name__ == "__main__":
    cli()
