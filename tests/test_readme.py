"""The README's two set-up commands are what CI runs, so a green CI proves the README."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setup_commands() -> list[str]:
    readme = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"## Set-up: two commands\s+```bash\n(.*?)```", readme, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def ci_lines() -> list[str]:
    """.ci/run's commands: its lines without comments and blank lines."""
    lines = [line.split("#")[0].strip() for line in open(os.path.join(ROOT, ".ci", "run"))]
    return [line for line in lines if line]


def test_ci_runs_the_readme_commands_verbatim():
    commands = setup_commands()
    assert len(commands) == 2
    assert "pip install -r requirements.txt" in commands[0] and "python generate.py --dynts" in commands[0]
    ci = ci_lines()
    for command in commands:
        assert command in ci, f".ci/run does not run {command!r}"


def test_ci_runs_them_in_a_fresh_virtual_environment():
    """Not in whatever Python the CI machine has (a package installed there by hand once made a
    test pass in CI that failed on a fresh machine): a new venv, without the system's packages,
    created and activated before the README's first command."""
    ci, first = ci_lines(), setup_commands()[0]
    create = [i for i, line in enumerate(ci) if re.search(r"\bpython3? -m venv\b", line)]
    activate = [i for i, line in enumerate(ci) if re.match(r"(source|\.) \S*bin/activate\b", line)]
    assert create and activate, ".ci/run creates no venv, or does not activate it"
    assert not any("--system-site-packages" in ci[i] for i in create)
    assert create[0] < activate[0] < ci.index(first)


def test_requirements_pin_the_cpu_torch_and_need_nothing_else():
    lines = [line.split("#")[0].strip() for line in open(os.path.join(ROOT, "requirements.txt"))]
    reqs = [line.split("==")[0].split(">=")[0] for line in lines if line]
    # safetensors: only for --hf (real checkpoints) and the tests of its loader; matplotlib: the figures
    assert sorted(reqs) == ["hypothesis", "matplotlib", "numpy", "pytest", "safetensors", "tiktoken", "torch"]


def test_the_reading_order_gives_each_files_length():
    """The README's "Read it in this order" table: each core file's line count as it is now."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    rows = re.findall(r"^\| \[(\w+\.py)\]\(\w+\.py\) \| (\d+) \|", readme, re.M)
    assert [name for name, _ in rows] == ["model.py", "dynts.py", "generate.py", "profile.py"]
    for name, lines in rows:
        assert int(lines) == sum(1 for _ in open(os.path.join(ROOT, name))), f"README: {name} has another length"
