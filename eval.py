"""Compare KV-cache policies on held-out problems at one budget: `python eval.py`.

The paper's comparison in miniature: every policy decodes the same N held-out problems
(greedy, so Pass@1 is the fraction solved) with the same budget, window and ratio, and the
table shows Pass@1, the KV cache's peak and mean length per problem, the compression against
the full cache, and the decoding speed. `--budgets` sweeps the budget and draws accuracy
against it (a PNG when matplotlib is installed).
"""

import argparse
import json
import sys

import torch

import task
import train
from generate import (DEFAULT_CKPT, POLICIES, UsageError, generate, load_checkpoint, make_policy,
                      resolve_device)
from model import get_encoding


@torch.no_grad()
def run_policy(name, model, predictor, problems, budget, window, ratio, batch_size, enc) -> dict:
    """Decode `problems` under one policy; per-problem correctness and KV lengths, summed up."""
    device = model.wte.weight.device
    correct, peaks, means, tokens_out, seconds = [], [], [], 0, 0.0
    for i in range(0, len(problems), batch_size):
        batch = problems[i:i + batch_size]
        prompts = [enc.encode(p.prompt, allowed_special="all") for p in batch]
        if len({len(p) for p in prompts}) != 1:
            raise ValueError("eval.py batches prompts of one length; this task's prompts differ")
        P = len(prompts[0])
        policy = make_policy(name, budget, window, ratio, predictor, P, enc)
        lengths = []  # the cache's length after each forward: the tokens that step attended to
        tokens, stats = generate(model, prompts, policy, model.config.block_size - P, eot_id=enc.eot_token,
                                 vocab_limit=enc.n_vocab, on_step=lengths.append)
        for p, row in zip(batch, tokens.tolist()):
            n = row.index(enc.eot_token) + 1 if enc.eot_token in row else len(row)  # this row's own tokens
            correct.append(task.check_answer(p, enc.decode(row[:n])))
            peaks.append(max(lengths[:n]))
            means.append(sum(lengths[:n]) / n)
            tokens_out += n
        seconds += stats["seconds"]
    n = len(problems)
    return dict(policy=name, pass_at_1=sum(correct) / n, peak_kv_tokens=sum(peaks) / n,
                mean_kv_tokens=sum(means) / n, tokens_per_s=tokens_out / seconds, n_problems=n,
                budget=None if name == "full" else budget, window=window, ratio=ratio)


def table(rows: list[dict]) -> str:
    full = next((r for r in rows if r["policy"] == "full"), None)
    lines = [f"{'policy':<14} {'budget':>6} {'Pass@1':>7} {'peak KV':>8} {'mean KV':>8} {'compression':>11} {'tokens/s':>9}"]
    for r in rows:
        comp = f"{full['peak_kv_tokens'] / r['peak_kv_tokens']:.2f}x" if full else "-"
        lines.append(f"{r['policy']:<14} {str(r['budget'] or '-'):>6} {r['pass_at_1']:>7.1%} {r['peak_kv_tokens']:>8.0f} "
                     f"{r['mean_kv_tokens']:>8.0f} {comp:>11} {r['tokens_per_s']:>9.0f}")
    return "\n".join(lines)


def plot(rows: list[dict], path: str):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot {path}: matplotlib is not installed; skipped (pip install matplotlib)", file=sys.stderr)
        return
    names = list(dict.fromkeys(r["policy"] for r in rows))
    if len(rows) == len(names):  # one budget: a bar per policy, like the paper's summary figure
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
        labels = [f"{r['policy']} ({r['peak_kv_tokens']:.0f} KV tokens)" for r in rows]
        ax.barh(labels[::-1], [100 * r["pass_at_1"] for r in rows[::-1]], color="tab:blue")
        ax.set_xlabel("Pass@1 (%)")
        ax.set_xlim(0, 100)
        ax.grid(alpha=0.3, axis="x")
    else:  # a budget sweep: accuracy against the peak KV cache, a line per policy
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in names:
            pts = sorted((r["peak_kv_tokens"], 100 * r["pass_at_1"]) for r in rows if r["policy"] == name)
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xlabel("peak KV cache (tokens per problem)")
        ax.set_ylabel("Pass@1 (%)")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(ckpt=DEFAULT_CKPT, n=None, seed=0, policies="full,window,streaming,dynts", budget=None, window=None,
         ratio=None, budgets=None, batch_size=None, device=None, dtype="float32", ranking_traces=None,
         json_path=None, plot_path=None):
    device = resolve_device(device)
    cuda = device.startswith("cuda")
    n = n if n is not None else (500 if cuda else 10)
    batch_size = batch_size if batch_size is not None else (500 if cuda else 10)
    ranking_traces = ranking_traces if ranking_traces is not None else (100 if cuda else 8)
    for flag, value in [("--n", n), ("--batch-size", batch_size)]:
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    names = policies.split(",")
    for name in names:
        if name not in POLICIES:
            raise UsageError(f"--policies: unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    model, predictor, meta = load_checkpoint(ckpt)
    model.to(device=device, dtype=getattr(torch, dtype)).eval()
    predictor.to(device=device, dtype=getattr(torch, dtype)).eval()
    enc = get_encoding(meta["encoding"])
    d = meta["decoding"]
    budget = d["budget"] if budget is None else budget
    window = d["window"] if window is None else window
    ratio = d["ratio"] if ratio is None else ratio
    try:
        sweep = [int(b) for b in budgets.split(",")] if budgets else [budget]
    except ValueError:
        raise UsageError(f"--budgets {budgets!r}: give comma-separated integers, e.g. 600,900,1200") from None
    problems = task.problems("eval", n, seed=seed, **meta["task"])
    prompt_len = len(enc.encode(problems[0].prompt, allowed_special="all"))
    for name in names:  # bad settings fail now, not after an hour of decoding
        for b in ([None] if name == "full" else sweep):
            make_policy(name, b, window, ratio, predictor, prompt_len, enc)
    print(f"{n} held-out problems (seed {seed}), window {window}, ratio {ratio}, on {device} ({dtype})", flush=True)

    rows = []
    for name in names:
        for b in ([None] if name == "full" else sweep):
            rows.append(run_policy(name, model, predictor, problems, b, window, ratio, batch_size, enc))
            print(table(rows[-1:]).splitlines()[1], flush=True)
    print("\n" + table(rows))
    ranking = train.ranking_quality(model, predictor, ranking_traces, device)
    print(f"\npredictor on {ranking_traces} held-out traces: Spearman {ranking['spearman']:.3f} against the labels; "
          f"decisive tokens in its top 10%: {ranking['decisive_recall_top10']:.1%}")
    result = dict(rows=rows, ranking=ranking, n=n, seed=seed, device=device, dtype=dtype, ckpt=ckpt)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    if plot_path:
        plot(rows, plot_path)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default=DEFAULT_CKPT, help="checkpoint from train.py")
    p.add_argument("--n", type=int, help="held-out problems (default: 500 on cuda, 10 on cpu)")
    p.add_argument("--seed", type=int, default=0, help="which held-out problems")
    p.add_argument("--policies", default="full,window,streaming,dynts", help="comma-separated policies to compare")
    p.add_argument("--budget", type=int, help="KV budget (default: the checkpoint's)")
    p.add_argument("--window", type=int, help="recent tokens always kept (default: the checkpoint's)")
    p.add_argument("--ratio", type=float, help="fraction of older tokens kept (default: the checkpoint's)")
    p.add_argument("--budgets", help="comma-separated budgets to sweep instead of --budget, e.g. 600,900,1200")
    p.add_argument("--batch-size", type=int, help="problems decoded together (default: 500 on cuda, 10 on cpu)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when there is one)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weights and KV cache")
    p.add_argument("--ranking-traces", type=int, help="held-out traces for the predictor's Spearman (default: 100 / 8)")
    p.add_argument("--json", dest="json_path", help="write the results as JSON to this path")
    p.add_argument("--plot", dest="plot_path", help="PNG of Pass@1 against peak KV (needs matplotlib)")
    return p.parse_args(argv)


def cli(argv=None):
    try:
        main(**vars(parse_args(argv)))
    except ValueError as e:
        sys.exit(f"eval.py: error: {e}")


if __name__ == "__main__":
    cli()
