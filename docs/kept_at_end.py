"""What a policy still holds when a trace ends: decode n problems of one family with a
checkpoint's model under a policy (DynTS unless named) at the checkpoint's default budget, and
print, per problem, the answer against the expected one and the thinking tokens cached at the
last step before the contiguous run of the latest ones: what the evictions kept of the older
tokens.

usage: python docs/kept_at_end.py CKPT [FAMILY] [N] [POLICY]   (validation problems; CPU, about 30 s for 10)
docs/RESULTS.md's `reused` diagnosis: python docs/kept_at_end.py out/ck/seed1.pt reused 10
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import generate  # noqa: E402
from lab import task  # noqa: E402
from lab.checkpoint import load_checkpoint  # noqa: E402
from lab.cli import run_cli  # noqa: E402
from lab.policies import NAMES, make_policy  # noqa: E402
from model import get_encoding  # noqa: E402


def main(ckpt: str, family: str = "reused", n: int = 10, policy: str = "dynts"):
    if n < 1:
        raise ValueError(f"N must be >= 1, got {n}")
    model, predictor, meta = load_checkpoint(ckpt, flag="CKPT")
    model.eval()
    enc = get_encoding(meta["encoding"])
    budget, window, ratio = (meta["decoding"][k] for k in ("budget", "window", "ratio"))
    problems = task.problems("valid", n, family=family, **meta["task"])
    prompts = [enc.encode(p.prompt, allowed_special="all") for p in problems]
    P = len(prompts[0])  # every prompt has the same length
    name, policy = policy, make_policy(policy, budget, window, ratio, P, predictor, enc)
    last = dict(held=torch.zeros(n, 0, dtype=torch.long), seen=0)

    def on_step(cache, eviction):
        """The positions the last step's forward read (before its eviction, if it evicted): those
        held after the step before, and the tokens written since."""
        held = cache.pos[:, :cache.length].clone()
        read = held if eviction is None else \
            torch.cat([last["held"], torch.arange(last["seen"], cache.seen).expand(n, -1)], dim=1)
        last.update(pos=read, held=held, seen=cache.seen)

    with torch.no_grad():
        tokens, _ = generate.generate(model, prompts, policy, 4000, eot_id=enc.eot_token, on_step=on_step)
    print(f"{ckpt}: {name}, budget {budget}, window {window}, ratio {ratio}; {n} validation problems of `{family}`")
    for i, p in enumerate(problems):
        ids = prompts[i] + [t for t in tokens[i].tolist() if t != enc.eot_token]
        text = enc.decode(ids[P:])
        cached = sorted(x for x in last["pos"][i].tolist() if x >= P)
        tail = len(cached) - 1  # the contiguous run of the latest tokens: the window and what came after it
        while tail > 0 and cached[tail - 1] == cached[tail] - 1:
            tail -= 1
        older = cached[:tail]
        kept = "".join(enc.decode([ids[x]]) for x in older)
        verdict = "right" if task.check_answer(p, text) else "WRONG"
        print(f"{i}: {verdict} {p.answer!r}, wrote {task.answer_of(text)!r}; older tokens kept: {kept[:80]!r}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", help="a checkpoint of train.py")
    p.add_argument("family", nargs="?", default="reused", choices=task.FAMILIES)
    p.add_argument("n", nargs="?", type=int, default=10, help="validation problems (default: 10)")
    p.add_argument("policy", nargs="?", default="dynts", choices=NAMES)
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli("kept_at_end.py", main, parse_args)
