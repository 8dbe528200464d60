"""Where a wrong answer goes wrong: in the thinking, or in the copy? For each problem that a
policy answers wrong, classify each wrong item by what the trace wrote for it before `</think>`:
"walk" if its first result statement ("so A=kl.") was already wrong; "recall" if that was right
but a later restatement ("so far A=kl", a correction) was wrong; "copy" if every statement was
right and only the answer was wrong. (In `mixed`, C's first statement is a step short by
design, so a wrong C there counts as "walk" whatever went wrong.) Then, over every trace, right
or wrong: the walks that start at another node than the reference trace's ("C: mu>..." where C
starts at ql), and the trace's restatements of a start ("check 60: B starts at dr") that name
another node. Sampled at the checkpoint's temperature, one batch per policy, the same generator
seed; each policy after the first is then paired with it on the same problems (McNemar), with
Wilson intervals.
usage: python docs/next/why_wrong.py CKPT [N_PER_FAMILY] [POLICIES] [FRACTION]"""

import os
import re
import sys
from collections import Counter

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

if len(sys.argv) < 2:
    sys.exit(__doc__.splitlines()[-1])

from generate import generate  # noqa: E402
from lab import task  # noqa: E402
from lab.stats import mcnemar, wilson  # noqa: E402
from lab.policies import make_policy  # noqa: E402
from lab.task import END_THINK  # noqa: E402
from model import get_encoding  # noqa: E402
from probe_setup import setup  # noqa: E402
from starts import RESTATED, WALK  # noqa: E402

args = sys.argv[1:] + ["4", "full,dynts", "0.3"][len(sys.argv) - 2:]
names = args[2].split(",")
torch.set_num_threads(2)
model, predictor, meta, n, fraction, budget, window = setup("why_wrong.py", args[0], args[1], args[3], names)
enc, d = get_encoding(meta["encoding"]), meta["decoding"]
problems = [p for f in task.families_of(meta["task"]) for p in task.problems("eval", n, seed=0, family=f, **meta["task"])]
prompts = [enc.encode(p.prompt, allowed_special="all") for p in problems]
assert len({len(p) for p in prompts}) == 1, "one batch needs prompts of one length"
P = len(prompts[0])
end_think, eot = enc.encode_single_token(END_THINK), enc.eot_token
solved = {}  # policy -> [right?] per problem, for the pairs at the end
for name in names:
    policy = make_policy(name, None if name == "full" else budget, 0 if name == "full" else window, d["ratio"], P,
                         predictor, enc)
    generator = torch.Generator().manual_seed(1234)
    tokens, stats = generate(model, prompts, policy, model.config.block_size - P, eot_id=eot, vocab_limit=enc.n_vocab,
                             temperature=d.get("temperature", 0.0), generator=generator, check_every=32)
    kinds, letters, wrong, solved[name] = Counter(), Counter(), 0, []
    starts = Counter()  # walks starting at a wrong node, by letter; restatements, and those wrong
    for p, row in zip(problems, tokens.tolist()):
        text = enc.decode(row[:row.index(eot) + 1] if eot in row else row)
        start_of = dict(WALK.findall(p.thinking))  # where the reference trace starts each walk
        thinking = text.split(END_THINK, 1)[0]  # the prompt too, where neither pattern occurs
        starts.update(letter for letter, node in WALK.findall(thinking) if start_of.get(letter) != node)
        restated = RESTATED.findall(thinking)
        starts["restated"] += len(restated)
        starts["restated wrong"] += sum(start_of.get(letter) != node for letter, node in restated)
        solved[name].append(task.check_answer(p, text))
        if solved[name][-1]:
            continue
        wrong += 1
        got = dict(item.split("=", 1) for item in (task.answer_of(text) or "").split() if "=" in item)
        for item in p.answer.split():
            letter, truth = item.split("=", 1)
            said = re.findall(rf"\b{letter}=([a-z>]+)[. ]", thinking)  # its result statements, then restatements
            if got.get(letter) == truth:
                continue
            letters[letter] += 1
            kinds["no answer" if task.answer_of(text) is None else "never stated" if not said else
                  "walk (first statement wrong)" if said[0] != truth else
                  "recall (first right, a later one wrong)" if said[-1] != truth else
                  "copy (every statement right)"] += 1
        print(f"  {name} {p.family}: answer {task.answer_of(text)!r}, truth {p.answer!r}", flush=True)
    print(f"{name} at {budget if name != 'full' else 'no'} budget: {len(problems) - wrong} of {len(problems)} right; "
          f"wrong items: {dict(kinds)}, by statement {dict(sorted(letters.items()))}; {stats['new_tokens']} steps, "
          f"{stats['seconds']:.0f} s", flush=True)
    print(f"  walks starting at a wrong node: {' '.join(f'{k} {starts[k]}' for k in 'ABC')}; restatements of a start "
          f"naming a wrong node: {starts['restated wrong']} of {starts['restated']}", flush=True)

interval = lambda right: "{:.0%} [{:.0%}, {:.0%}]".format(sum(right) / len(right), *wilson(sum(right), len(right)))
for name in names[1:]:
    a, b = solved[names[0]], solved[name]
    print(f"{name} against {names[0]}: {sum(b)} against {sum(a)} of {len(a)} right ({interval(b)} against "
          f"{interval(a)}, Wilson 95%); only {name} right on {sum(y and not x for x, y in zip(a, b))}, only "
          f"{names[0]} on {sum(x and not y for x, y in zip(a, b))}; McNemar p = {mcnemar(a, b):.2g}", flush=True)
