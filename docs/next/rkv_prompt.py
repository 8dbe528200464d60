"""Why `rkv` and `rkv+p` record the same outcome: does R-KV's rule (the official DynTS code's form,
the prompt not protected) ever evict a prompt slot? For each problem, decoded as `python
generate.py --policy rkv --problem N` does, each eviction prints the prompt slots kept of those
live, and where the prompt's slots stand among all live slots (their mean percentile, 1 = the top)
by the score R-KV ranks by, by its importance term alone, and by its redundancy term alone (the
least redundant on top).
usage: python docs/next/rkv_prompt.py PROBLEM [PROBLEM ...]"""

import contextlib
import io
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import torch.nn.functional as F  # noqa: E402

import dynts  # noqa: E402
import generate  # noqa: E402
from lab import policies  # noqa: E402

rows = []  # this problem's evictions
rkv_eviction_scores, policy_evict = policies.RKV.eviction_scores, dynts.Policy.evict  # the rules, unwrapped


def percentile(x, among):  # mean percentile of the slots `among` by x (1 = the highest)
    return float((x.argsort().argsort().float() / (len(x) - 1))[among].mean())


def rkv_scores(self, cache):
    score = rkv_eviction_scores(self, cache)
    importance = policies.SnapKV.eviction_scores(self, cache)[0]
    L = self.length
    k = F.normalize(cache.kv[:, 0, :, :, :L].float(), dim=-1)  # as RKV.eviction_scores reads them
    similarity = (((k * k.sum(dim=3, keepdim=True)).sum(dim=-1) - 1) / max(L - 1, 1)).mean(dim=(0, 2))[0]
    prompt = self.positions[0, :L] < self.prompt_len
    rows.append(dict(live=L, prompt=int(prompt.sum()), by_score=percentile(score[0], prompt),
                     by_importance=percentile(importance, prompt), by_low_redundancy=percentile(-similarity, prompt)))
    return score


def evict(self, cache):
    out = policy_evict(self, cache)
    rows[-1]["prompt_kept"] = int((cache.pos[0, :cache.length] < self.prompt_len).sum())
    return out


if len(sys.argv) < 2 or not all(a.isdigit() for a in sys.argv[1:]):
    sys.exit(__doc__.splitlines()[-1])
policies.RKV.eviction_scores = rkv_scores
dynts.Policy.evict = evict
for problem in sys.argv[1:]:
    rows.clear()
    with contextlib.redirect_stdout(io.StringIO()):
        generate.cli(["--policy", "rkv", "--problem", problem])
    print(f"problem {problem}, rkv, {len(rows)} evictions:")
    for r in rows:
        print(f"  {r['prompt_kept']} of {r['prompt']} prompt slots kept (of {r['live']} live); the prompt's mean "
              f"percentile by score {r['by_score']:.2f}, by importance {r['by_importance']:.2f}, "
              f"by low redundancy {r['by_low_redundancy']:.2f}")
