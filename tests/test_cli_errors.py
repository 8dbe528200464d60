"""A user's mistake, in a real process: a non-zero exit, one line on stderr that names the flag
or the file, and no traceback, before any long work. One case per class of mistake."""

import importlib
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
torch = pytest.importorskip("torch")

import dynts
from lab import hf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF_LLAMA = os.path.join("tests", "fixtures", "hf-llama")


def qwen2_predictor(path):
    """A predictor-only checkpoint (train.py --hf's format) for the tiny Qwen2 fixture."""
    config = hf.config_from_hf(os.path.join(ROOT, "tests", "fixtures", "hf-qwen2", "config.json"))
    torch.save(dict(kind="dynts-predictor", config=asdict(config), model_dir="tests/fixtures/hf-qwen2",
                    predictor=dynts.ImportancePredictor(config.n_embd).state_dict(), label_scale=1e4,
                    decoding=dict(budget=64, window=8, ratio=0.3), metrics={}), path)

def command(script: str) -> list[str]:
    """How a user runs it: `python generate.py`, or a lab module `python -m lab.eval`."""
    return [sys.executable, script] if script.endswith(".py") else [sys.executable, "-m", script]


CASES = [  # (script, arguments, what the line must name)
    ("generate.py", ["--device", "tpu"], "--device"),                                # devices
    ("generate.py", ["--cuda-graphs", "--device", "cpu"], "--cuda-graphs needs a CUDA device"),
    ("generate.py", ["--cuda-graphs", "--policy", "h2o+p"], "--policy h2o+p scores by attention"),
    ("generate.py", ["--ckpt", "{tmp}/empty.pt"], "empty.pt"),                       # checkpoint contents
    ("lab.eval", ["--json", "/no/such/folder/r.json"], "--json"),                      # output paths
    ("generate.py", ["--init", "random", "--temperature", "nan"], "--temperature"),  # numbers that are not
    ("lab.train", ["--lr", "inf", "--out", "{tmp}/x.pt"], "--lr"),
    ("lab.train", ["--out", "/proc/x/y.pt"], "--out /proc/x/y.pt: its folder /proc/x cannot be"),
    ("generate.py", ["--prompt", "hi", "--problem", "3"], "--problem"),              # settings that clash
    ("generate.py", ["--preset", "gpt2"], "--preset gpt2 is the shape of --init random"),
    ("generate.py", ["--init", "random", "--prompt", "x" * 5000], "block_size"),     # in the user's terms
    ("generate.py", ["--init", "random", "--preset", "r1-llama-8b"], "--preset r1-llama-8b"),  # memory
    ("generate.py", ["--num-samples", "1000000"], "--num-samples"),
    ("lab.eval", ["--n", "10000", "--batch-size", "50000"], "--batch-size"),
    ("profile.py", ["--preset", "tiny", "--budget", "10", "--window", "2", "--prompt-len", "16"], "--budget 10"),
    ("profile.py", ["--preset", "tiny", "--batch-size", "100000000"], "--batch-size"),
    ("profile.py", ["--preset", "tiny", "--json", "/no/such/folder/p.json"], "--json"),
    ("profile.py", ["--preset", "tiny", "--memory-gib", "10"], "--memory-gib"),  # only sizes --batch-size max
    ("lab.eval", ["--n", "100000000"], "--n"),                                         # hangs
    ("generate.py", ["--policy", "dynts,bogus", "--html", "{tmp}/p.html"], "--policy 'bogus'"),
    ("lab.eval", ["--ranking-traces", "-1"], "--ranking-traces"),
    ("lab.eval", ["--policies", ""], "--policies '': an empty name"),
    ("lab.eval", ["--policies", "full, ,dynts"], "--policies 'full, ,dynts': an empty name"),
    ("lab.eval", ["--policies", "full", "--ratio", "1.5"], "--ratio must be in (0, 1], got 1.5"),
    ("lab.eval", ["--policies", "full", "--ratio", "0"], "--ratio must be in (0, 1], got 0.0"),
    ("generate.py", ["--hf", HF_LLAMA, "--ckpt", "{tmp}/empty.pt", "--prompt", "hi"], "--hf and --ckpt"),  # --hf
    ("generate.py", ["--hf", HF_LLAMA], "--prompt"),
    ("generate.py", ["--hf", HF_LLAMA, "--prompt", "hi", "--dynts"], "--predictor"),
    ("generate.py", ["--hf", HF_LLAMA, "--prompt", "hi", "--dynts", "--predictor", "{tmp}/qwen2-predictor.pt"],
     "a predictor for another model"),
]


@pytest.mark.parametrize("script,argv,names", CASES, ids=[f"{s} {a[0]}" for s, a, _ in CASES])
def test_one_line_no_traceback(script, argv, names, tmp_path, capsys):
    """In this process, for speed: the CLI's entry point (lab/cli.run_cli) must turn the mistake
    into a SystemExit with one line, and let no other exception out. (The tests below and
    test_generate's run a few in a real process.)"""
    open(tmp_path / "empty.pt", "wb").close()
    if "{tmp}/qwen2-predictor.pt" in argv:
        qwen2_predictor(tmp_path / "qwen2-predictor.pt")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--device" not in argv:
        argv = argv + ["--device", "cpu"]
    module = importlib.import_module(script.removesuffix(".py"))
    with pytest.raises(SystemExit) as e:
        module.cli(argv)
    message = e.value.code  # run_cli exits with the line itself
    lines = capsys.readouterr().err.strip().splitlines() + [message]
    assert isinstance(message, str) and len(lines) == 1 and names in message, lines


@pytest.mark.slow
def test_eval_cpu_default_runs_and_prints_the_table():
    """`python -m lab.eval` on a CPU: Full and DynTS on one problem per family (about a minute)."""
    r = subprocess.run(command("lab.eval") + ["--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "full" in r.stdout and "dynts" in r.stdout and "Spearman" in r.stdout


def test_train_names_the_flag_the_user_gave(tmp_path):
    r = subprocess.run(command("lab.train") + ["--base", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o.pt"),
                        "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--base" in r.stderr and "--ckpt" not in r.stderr


def test_eval_checks_the_budget_against_the_prompt_before_decoding():
    r = subprocess.run(command("lab.eval") + ["--budget", "90", "--device", "cpu"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and r.stderr.strip().endswith("--budget 90 must exceed the prompt's 96 tokens")


@pytest.mark.parametrize("module", ["generate", "profile", "lab.eval", "lab.train", "lab.browser"])
def test_help_prints(module, capsys):
    """--help formats every flag's help (a bare % in one would make argparse raise instead)."""
    module = importlib.import_module(module)
    with pytest.raises(SystemExit) as e:
        module.parse_args(["--help"])
    assert e.value.code == 0 and "--" in capsys.readouterr().out


BOUNDS = [  # a bound a number breaks, named by the flag the user typed
    ("generate.py", ["--dynts", "--budget", "10000000000"], "--budget 10000000000"),  # its KV cache cannot fit
    ("profile.py", ["--preset", "tiny", "--policies", "dynts", "--budget", "10000000000", "--batch-size", "64"],
     "--budget 10000000000"),
    ("profile.py", ["--preset", "tiny", "--seed", str(2**70)], "--seed"),  # beyond 64 bits
    ("profile.py", ["--preset", "tiny", "--policies", "full", "--ratio", "2"], "--ratio"),  # even for full alone
]


@pytest.mark.parametrize("script,argv,names", BOUNDS, ids=[f"{s} {a[-2]}" for s, a, _ in BOUNDS])
def test_a_number_out_of_bounds_is_one_line_naming_its_flag(script, argv, names):
    r = subprocess.run(command(script) + argv + ["--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and names in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_a_dynts_setting_that_keeps_no_older_thinking_token_says_so(capsys):
    """--budget 400 --window 160 keeps floor(0.3 x 240) = 72 older slots, fewer than the 96-token
    protected prompt: one note, and DynTS then decodes exactly what window+p decodes."""
    import io

    import generate
    settings = dict(budget=400, window=160, max_new_tokens=500, out=io.StringIO())
    dynts_stats = generate.main(policy="dynts", stats_json=None, **settings)
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and "72 older tokens" in note[0] and "96-token protected prompt" in note[0]
    assert dynts_stats["evictions"] >= 1 and set(dynts_stats["older_thinking_kept"]) == {0}
    window_text, dynts_text = io.StringIO(), settings["out"].getvalue()
    generate.main(policy="window+p", **dict(settings, out=window_text))
    assert "no older generated token" in capsys.readouterr().err  # window+p protects the prompt too
    strip = lambda text: text.split("\n\n")[0]  # the trace, before the summary
    assert strip(dynts_text) == strip(window_text.getvalue())
    generate.main(policy="dynts", **dict(settings, budget=860, window=344, out=io.StringIO()))  # the default keeps some
    assert capsys.readouterr().err == ""


def test_ctrl_c_in_profile_keeps_the_policies_done_and_says_how_to_continue(tmp_path):
    import json
    import signal
    import time
    out = tmp_path / "p.json"
    p = subprocess.Popen(command("profile.py") + ["--preset", "tiny", "--policies", "full,dynts", "--every", "100",
                                                  "--device", "cpu", "--json", str(out)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:  # Full is done once dynts's table starts
        if line.startswith("dynts, batch"):
            break
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=60)[1]
    lines = err.strip().splitlines()
    assert p.returncode == 130 and len(lines) == 1, err
    assert f"the records of full are in {out}" in lines[0] and "run again with --policies dynts" in lines[0]
    assert list(json.load(open(out))["records"]) == ["full"]
