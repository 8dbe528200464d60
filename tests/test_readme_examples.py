"""The README's examples do what it says: the worked selection example, and the Python snippet."""

import os
import re

import torch

from dynts import INF, Policy, select_keep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def test_the_worked_example_is_what_select_keeps():
    table = README[README.index("**A worked example.**"):]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines()[2:8] if line.startswith("|")}
    ranking = torch.tensor([[INF if r == "+inf" else float(r) for r in rows["ranking"]]])
    written = [i for i, k in enumerate(rows["kept"]) if k == "yes"]
    policy = Policy(budget=12, window=4, ratio=0.5, prompt_len=2, protect_prompt=True)
    assert policy.select(ranking).tolist() == [written] == [[0, 1, 3, 6, 8, 9, 10, 11]]
    assert select_keep(ranking, 8, 4).tolist() == [written]
    assert "[0, 1, 3, 6, 8, 9, 10, 11]" in table


def test_the_python_example_runs_and_solves_its_problem(capsys):
    code = re.search(r"## Use it from Python.*?```python\n(.*?)```", README, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["stats"]["evictions"] >= 1
    assert scope["problem"].answer in capsys.readouterr().out  # the answer it printed is the right one
