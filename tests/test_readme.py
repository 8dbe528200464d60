"""The README's two set-up commands are what CI runs, so a green CI proves the README."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setup_commands() -> list[str]:
    readme = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"## Set-up: two commands\s+```bash\n(.*?)```", readme, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_commands_verbatim():
    commands = setup_commands()
    assert len(commands) == 2
    assert "pip install -r requirements.txt" in commands[0] and "python generate.py --dynts" in commands[0]
    ci = open(os.path.join(ROOT, ".ci", "run")).read().splitlines()
    for command in commands:
        assert command in ci, f".ci/run does not run {command!r}"


def test_requirements_pin_the_cpu_torch_and_need_nothing_else():
    lines = [line.split("#")[0].strip() for line in open(os.path.join(ROOT, "requirements.txt"))]
    reqs = [line.split("==")[0].split(">=")[0] for line in lines if line]
    # safetensors: only for --hf (real checkpoints) and the tests of its loader
    assert sorted(reqs) == ["hypothesis", "numpy", "pytest", "safetensors", "tiktoken", "torch"]
