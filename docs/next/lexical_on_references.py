"""What a policy that reads only the text can keep, family by family, on the reference traces.

Each validation problem's reference trace (the task's own text: no model, no sampling) is
replayed through the policy's own observe and evict (lab/train.py's values_kept_at_the_answer,
on eviction_deaths, as the blind masks are made) under the checkpoint's 30% budget, window and
ratio; we ask whether the value of each asked result's first result statement ("kl, so A=kl.")
is still cached when the answer starts. Policies whose scores need no model (the lexical
control, the window, StreamingLLM, SepLLM, all with the prompt protected) are simulated exactly
so: this shows by construction how each family defeats them, before any model decodes.
(tests/test_task.py checks the lexical control's case with the same function.)

    python docs/next/lexical_on_references.py [CKPT] [N]      (N validation problems a family)
"""
import os
import sys
import time


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from lab import task  # noqa: E402
from lab.checkpoint import DEFAULT_CKPT, load_checkpoint  # noqa: E402
from lab.policies import make_policy  # noqa: E402
from lab.train import values_kept_at_the_answer  # noqa: E402
from model import get_encoding  # noqa: E402

POLICIES = ("lexical", "window+p", "streaming+p", "sepllm+p")


def values_kept(name, problem, enc, d) -> int:
    """How many asked results still have their first statement's value cached at the answer."""
    P = len(enc.encode(problem.prompt, allowed_special="all"))
    return sum(values_kept_at_the_answer(make_policy(name, d["budget"], d["window"], d["ratio"], P, enc=enc),
                                         problem, enc))


def main(ckpt=DEFAULT_CKPT, n=50):
    meta = load_checkpoint(ckpt)[2]
    enc, d = get_encoding(meta["encoding"]), meta["decoding"]
    print(f"{ckpt}: budget {d['budget']}, window {d['window']}, ratio {d['ratio']}; {n} validation problems a family;"
          f" reference traces, no model. Cell: problems with all three asked values cached at the answer (%),"
          f" and the mean count of three")
    print("| family | " + " | ".join(POLICIES) + " |")
    print("|---" * (len(POLICIES) + 1) + "|")
    t0 = time.time()
    for family in task.FAMILIES:
        problems = task.problems("valid", n, family=family, **meta["task"])
        cells = [[values_kept(name, p, enc, d) for p in problems] for name in POLICIES]
        print(f"| {family} | " + " | ".join(f"{100 * sum(k == 3 for k in kept) / n:.0f} ({sum(kept) / n:.2f})"
                                           for kept in cells) + " |", flush=True)
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main(*(sys.argv[1:2] or [DEFAULT_CKPT]), *[int(a) for a in sys.argv[2:3]])
