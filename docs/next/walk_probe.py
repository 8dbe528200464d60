"""Does a smaller cache make the model misread its table? Teacher-forced on reference traces:
the probability the model gives each byte that a walk copies from the table (the node after each
">" in "C: sa>ug>ej, so C=ej."), with the full cache and under each policy's evictions (the
keys a query would no longer see, as lab/train.py's eviction_deaths replays them). The table is
in the protected prompt under every policy here; only what else is cached changes. Per walk
(A is written before any eviction, B and C after), the mean probability of a copied byte and
the chance that sampling at temperature 1 writes the whole walk right (their product); then, per
problem, the chance of all three walks right, and 95% intervals for the differences between
policies (a paired bootstrap over the problems).
usage: python docs/next/walk_probe.py CKPT [N_PER_FAMILY] [FRACTION] [POLICIES, default full,dynts,dynts-random,window+p]"""

import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

if len(sys.argv) < 2:
    sys.exit(__doc__.splitlines()[-1])

from lab import task  # noqa: E402
from lab.policies import make_policy  # noqa: E402
from lab.train import eviction_deaths, visibility  # noqa: E402
from model import get_encoding  # noqa: E402
from probe_setup import setup  # noqa: E402

args = sys.argv[1:] + ["3", "0.3", "full,dynts,dynts-random,window+p"][len(sys.argv) - 2:]
POLICIES = args[3].split(",")
torch.set_num_threads(int(os.environ.get("THREADS", 2)))
model, predictor, meta, n, fraction, budget, window = setup("walk_probe.py", args[0], args[1], args[2], POLICIES)
enc, d = get_encoding(meta["encoding"]), meta["decoding"]
problems = [p for f in task.families_of(meta["task"]) for p in task.problems("valid", n, seed=0, family=f, **meta["task"])]
sums = {(name, walk): [0.0, 0.0, 0] for name in POLICIES for walk in "ABC"}  # mean p, P(walk right), count
all_three = {name: [] for name in POLICIES}  # per problem: P(the three walks right)
with torch.no_grad():
    for k, problem in enumerate(problems):
        text = problem.text()
        ids = torch.tensor(enc.encode(text, allowed_special="all"))
        at = lambda c: len(enc.encode(text[:c], allowed_special="all"))  # character -> token position
        P = at(len(problem.prompt))
        _, hidden, _ = model(ids[None])
        walks = {}
        for m in re.finditer(r"(?:\n|<think>)([ABC]): ([a-z>]+), so", text):
            nodes = [j for j in range(m.start(2), m.end(2)) if text[j - 1] == ">" or text[j - 2] == ">"]
            walks[m.group(1)] = [at(j) for j in nodes]  # the copied bytes' token positions
        for name in POLICIES:
            if name == "full":
                mask = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
            else:
                policy = make_policy(name, budget, window, d["ratio"], P, predictor, enc)
                mask = visibility(eviction_deaths(policy, ids, hidden[0].float())[None])[0]
            _, h, _ = model(ids[None], mask=mask[None])
            probs = model.lm_head(h[0]).float().softmax(-1)  # (T, vocab): every position's next token
            right = 1.0
            for walk, positions in walks.items():
                p = torch.stack([probs[t - 1, ids[t]] for t in positions])
                s = sums[(name, walk)]
                s[0] += p.mean().item(); s[1] += p.prod().item(); s[2] += 1
                right *= p.prod().item()
            all_three[name].append(right)
        print(f"problem {k + 1} of {len(problems)} ({problem.family})", flush=True)
print(f"{len(problems)} validation problems, budget {budget} ({fraction:.0%}), window {window}, ratio {d['ratio']}")
print("policy         walk  mean p(copied byte)  P(walk right at temperature 1)")
for (name, walk), (mp, pw, c) in sums.items():
    print(f"{name:14} {walk:4}  {mp / max(c, 1):19.4f}  {pw / max(c, 1):30.4f}  ({c} walks)")

g = torch.Generator().manual_seed(0)
draws = torch.randint(0, len(problems), (10_000, len(problems)), generator=g)  # problems resampled, paired
print("P(the three walks right), mean over problems, and differences with a paired bootstrap's 95% interval:")
for name in POLICIES:
    print(f"  {name:14} {sum(all_three[name]) / len(problems):.4f}")
for a, b in [("dynts", "full"), ("dynts-random", "dynts"), ("window+p", "dynts")]:
    if a not in POLICIES or b not in POLICIES:
        continue
    d = torch.tensor(all_three[a]) - torch.tensor(all_three[b])
    means = d[draws].mean(dim=1)
    lo, hi = means.quantile(torch.tensor([0.025, 0.975], dtype=means.dtype)).tolist()
    print(f"  {a} - {b}: {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]")
