"""The README's examples do what it says: the worked selection example, and the Python snippet."""

import os
import re

import pytest

torch = pytest.importorskip("torch")

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


def test_the_own_policy_example_keeps_what_it_scores_highest():
    code = re.search(r"\*\*Your own policy\*\*.*?```python\n(.*?)```", README, re.S).group(1)
    scope = {"Policy": Policy}
    exec(compile(code, "README.md", "exec"), scope)
    policy = next(v for v in scope.values() if isinstance(v, type) and issubclass(v, Policy) and v is not Policy)
    policy = policy(budget=10, window=2, ratio=0.5)
    policy.reset(1, 10)
    positions = torch.arange(10)
    policy.observe(torch.zeros(1, 10, dtype=torch.long), torch.zeros(1, 10, 2), positions)
    kept = policy.select(policy.ranking(None))[0].tolist()
    assert kept == [0, 2, 4, 6, 8, 9]  # older: 8 slots, keep 4, the even ones (ties: the later); window 8, 9


def test_the_python_example_runs_and_solves_its_problem(capsys):
    code = re.search(r"## Use it from Python.*?```python\n(.*?)```", README, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["stats"]["evictions"] >= 1
    assert scope["problem"].answer in capsys.readouterr().out  # the answer it printed is the right one


def project_imports() -> dict[str, set[str]]:
    """Each project module (top level and lab/) -> the project modules it imports, lazily or not."""
    import ast
    import pathlib
    files = list(pathlib.Path(ROOT).glob("*.py")) + list(pathlib.Path(ROOT, "lab").glob("*.py"))
    names = {str(p.relative_to(ROOT).with_suffix("")).replace("/", "."): p for p in files}
    graph = {}
    for name, path in names.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {d for d in deps if d in names and d not in (name, "lab.__init__")}
    return graph


def test_the_layout_the_readme_describes():
    graph = project_imports()
    assert {n for n in graph if "." not in n} == {"model", "dynts", "generate", "profile"}  # the card's four files
    assert graph["model"] == set() and graph["dynts"] == {"model"}

    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for d in graph[todo.pop()] - seen:
                seen.add(d)
                todo.append(d)
        return seen
    cycles = [(a, b) for a in graph for b in graph[a] if a in reachable(b)]
    assert cycles == []  # no module imports another that imports it back
