"""profile.py: the stdlib shim, the analytic counts, the decode loop's bookkeeping, the CLI and the
figure. The --cuda-graphs step itself (fastpath.py) is tested in tests/test_fastpath.py."""

import importlib.util
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_profile(name="dynts_profile"):
    """Our profile.py, loaded by path: `import profile` may already be the standard library's."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "profile.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


P = load_profile()
TINY = dict(preset="tiny", batch_size=2, prompt_len=16, steps=40, budget=40, window=8, every=10, tput_window=10,
            device="cpu")


def test_cprofile_profile_and_torch_compile_work_from_the_repo_root():
    code = ("import cProfile, profile, torch\n"
            "assert profile.__file__.endswith('profile.py')\n"
            "cProfile.run('sum(range(10))')\n"
            "profile.run('sum(range(10))')\n"
            "print(torch.compile(lambda x: x + 1, backend='eager')(torch.ones(2)).tolist())\n"
            "print(profile.__file__)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "[2.0, 2.0]" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == os.path.join(ROOT, "profile.py")  # ours, standing in for the stdlib's


def test_analytic_counts_match_the_formula():
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=64, n_layer=3, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=48)
    model = GPT(cfg)
    a = P.analytic(model, batch_size=5)
    C, kv = cfg.n_embd, cfg.n_kv_head * cfg.head_dim
    per_layer = C * (C + 2 * kv) + C * C + 2 * C * cfg.mlp_hidden  # qkv, attention proj, MLP
    assert a["matmul_params"] == cfg.n_layer * per_layer + cfg.vocab_size * C  # + the tied LM head
    assert a["kv_slot_bytes"] == cfg.n_layer * 2 * 5 * kv * 4  # K and V of all layers and rows, float32
    live = 17
    assert P.flops_per_token(a, live, False) == 2 * a["matmul_params"] + 4 * cfg.n_layer * C * live
    pred = P.dynts.ImportancePredictor(C)
    a = P.analytic(model, 5, pred)
    assert a["predictor_matmul_params"] == C * 2 * C + 2 * C * C // 2 + C // 2
    assert P.flops_per_token(a, live, True) - P.flops_per_token(a, live, False) == 2 * a["predictor_matmul_params"]
    everything = sum(p.numel() for p in model.parameters()) * 4
    assert a["weight_bytes"] == everything - cfg.block_size * C * 4 + C * 4  # one learned-position row read
    assert P.bytes_per_step(a, live, True) == a["weight_bytes"] + a["predictor_bytes"] + live * a["kv_slot_bytes"]


def test_main_on_cpu_times_every_step_and_reports_the_marks(tmp_path):
    out = io.StringIO()
    path = tmp_path / "profile.json"
    res = P.main(**TINY, policies="full,dynts,window", json_path=str(path), out=out)
    a, steps, prompt = res["analytic"], TINY["steps"], TINY["prompt_len"]
    for name, rec in res["records"].items():
        assert len(rec["step_s"]) == len(rec["policy_s"]) == len(rec["kv_read"]) == steps
        assert all(t > 0 for t in rec["step_s"]) and all(0 <= p <= s for p, s in zip(rec["policy_s"], rec["step_s"]))
        assert [r["step"] for r in res["marks"][name]] == [10, 20, 30, 40]
    full, dyn = res["records"]["full"], res["records"]["dynts"]
    assert full["kv_read"] == [prompt + i for i in range(1, steps + 1)] == full["kv_held"]
    assert full["kv_buffer_bytes"] > dyn["kv_buffer_bytes"] and full["evictions"] == 0
    # DynTS evicts at the budget and never holds more than it; the prompt (16) stays, plus the window (8).
    assert dyn["evictions"] >= 2 and max(dyn["kv_read"]) == TINY["budget"] and max(dyn["kv_held"]) < TINY["budget"]
    after = [h for r, h in zip(dyn["kv_read"], dyn["kv_held"]) if r == TINY["budget"]]  # after each eviction
    assert after == [TINY["window"] + prompt] * dyn["evictions"]  # the protected prompt and the window
    row = res["marks"]["dynts"][-1]
    assert row["gflops_per_token"] == pytest.approx(P.flops_per_token(a, dyn["kv_read"][-1], True) / 1e9)
    assert row["tokens_per_s"] == pytest.approx(2 * 10 / sum(dyn["step_s"][-10:]))
    assert 0 < row["roofline_fraction"] and 0 <= row["policy_share"] <= 1
    m = {x["step"]: x for x in res["multipliers"]["dynts"]}[40]
    assert m["kv_live"] == pytest.approx(dyn["kv_held"][-1] / full["kv_held"][-1])
    assert m["speedup_efficiency"] == pytest.approx(m["throughput"] / m["bytes_allowed_speedup"])
    text = out.getvalue()
    assert "dynts / full:" in text and "window / full:" in text and "% of decode time" in text
    saved = json.loads(path.read_text())
    assert saved["config"]["steps"] == steps and saved["records"]["dynts"]["kv_held"] == dyn["kv_held"]


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nope"], "--preset 'nope'"),
    (["--preset", "tiny", "--steps", "5000"], "exceeds the block_size"),
    (["--preset", "tiny", "--budget", "100", "--window", "100"], "--window must be >= 0 and below --budget"),
    (["--preset", "tiny", "--budget", "60", "--window", "20", "--prompt-len", "50"], "protected prompt"),
    (["--preset", "tiny", "--policies", "full,h3o"], "unknown policy"),
    (["--preset", "tiny", "--steps", "0"], "--steps must be >= 1"),
    (["--preset", "tiny", "--cuda-graphs", "--policies", "full,snapkv+p"], "snapkv+p scores by attention"),
])
def test_bad_inputs_exit_with_one_line(argv, message):
    with pytest.raises(SystemExit) as e:
        P.cli(argv + ["--device", "cpu"])
    assert str(e.value.code).startswith("profile.py: error: ") and message in str(e.value.code)
    assert "\n" not in str(e.value.code)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_requested_without_cuda_is_an_error():
    r = subprocess.run([sys.executable, "profile.py", "--preset", "tiny", "--device", "cuda"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and r.stderr.strip() == "profile.py: error: --device cuda: CUDA is not available on this machine (use cpu)"
    for preset in ["tiny", "tiny-llama"]:  # both block families have a fast path: only the device is missing
        with pytest.raises(SystemExit, match="--cuda-graphs needs a CUDA device"):
            P.cli(["--preset", preset, "--device", "cpu", "--cuda-graphs"])


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path, saved = tmp_path / "fig.png", tmp_path / "profile.json"
    P.main(**TINY, plot_path=str(path), json_path=str(saved), out=io.StringIO())
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    P.plot(json.loads(saved.read_text()), str(tmp_path / "again.png"))  # the same figure from the saved JSON
    assert (tmp_path / "again.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
