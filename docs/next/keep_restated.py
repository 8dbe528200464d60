"""Does seed 2 fail because DynTS evicts the trace's restatements of the walks' starts? A
diagnostic, not a method (it reads the task's text): `dynts-keep-restated` is DynTS with the two
node bytes of every restatement ("check 60: C starts at ql") ranked above every other thinking
token, below the answer and the prompt. Registered here for this run only, then run through
why_wrong.py beside DynTS, with the same problems and random numbers.
With --eval first, the rest are lab/eval.py's flags, and the policy is known to it by name (for
docs/next/gpu-next.sh's runs on 504 problems).
usage: python docs/next/keep_restated.py CKPT [N_PER_FAMILY] [POLICIES] [FRACTION] | --eval EVAL_FLAGS
(POLICIES default: dynts,dynts-keep-restated)"""

import os
import runpy
import sys

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [here, os.path.dirname(os.path.dirname(here))]

from dynts import ANSWER, DynTS  # noqa: E402
from lab import policies  # noqa: E402

PATTERN = torch.tensor(list(b"starts at "))  # a restatement's words before its node (the tiny task's tokens are bytes)
KEPT = ANSWER / 2  # above any predicted score, below the answer (ANSWER) and the prompt (+inf)


class KeepRestated(DynTS):
    name = "dynts-keep-restated"

    def reset(self, batch_size, capacity, device=None):
        super().reset(batch_size, capacity, device)
        self.before = torch.full((batch_size, len(PATTERN) + 1), -1, dtype=torch.long, device=device)
        self.pattern = PATTERN.to(device)

    def score(self, tokens, hidden, positions):
        K, T = self.before.shape[1], tokens.shape[1]
        seen = torch.cat([self.before, tokens], dim=1)  # token t is seen[:, K + t]
        self.before.copy_(seen[:, -K:])  # in place, as Lexical's, so that a replayed CUDA graph carries it on
        at = (seen.unfold(1, len(PATTERN), 1) == self.pattern).all(-1)  # at[:, j]: the pattern starts at j
        i = torch.arange(K, K + T, device=seen.device)
        node = at[:, i - len(PATTERN)] | at[:, i - len(PATTERN) - 1]  # the node's first or second byte
        return self.mark_answer(self.predict(hidden).float().masked_fill(node, KEPT), tokens, positions)


policies.CLASSES[KeepRestated.name] = KeepRestated
policies.NAMES.append(KeepRestated.name)

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__.splitlines()[-2])
    if sys.argv[1] == "--eval":
        sys.argv = ["python -m lab.eval", *sys.argv[2:]]
        runpy.run_module("lab.eval", run_name="__main__")
    else:
        args = sys.argv[1:] + ["6", "dynts,dynts-keep-restated", "0.3"][len(sys.argv) - 2:]
        sys.argv = [os.path.join(here, "why_wrong.py"), *args]
        runpy.run_path(sys.argv[0], run_name="__main__")
