"""profile.py: the stdlib shim, the analytic counts, the decode loop's bookkeeping, the CLI, and
the --cuda-graphs step against GPT.forward (run eagerly on the CPU)."""

import importlib.util
import io
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from model import GPT, PRESETS, GPTConfig, KVCache

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
    with pytest.raises(SystemExit, match="--cuda-graphs needs a CUDA device"):
        P.cli(["--preset", "tiny", "--device", "cpu", "--cuda-graphs"])


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "fig.png"
    P.main(**TINY, plot_path=str(path), out=io.StringIO())
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@torch.no_grad()
def check_graphed_step(P, steps=60, evict_at=30, chunk=256):
    """The --cuda-graphs step, run eagerly (no capture), against GPT.forward."""
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    model = GPT(cfg).eval()
    B, prompt = 3, torch.randint(0, 256, (3, 37))
    plain, fast = KVCache(cfg, B, 200), KVCache(cfg, B, 200)
    model(prompt, plain), model(prompt, fast)
    step = P.GraphedDecode(model, fast, capture=False, chunk=chunk)
    token = torch.randint(0, 256, (B, 1))
    for i in range(steps):
        logits, hidden, _ = model(token, plain)
        logits_fast, hidden_fast, _ = step(token, fast)
        torch.testing.assert_close(logits_fast, logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(hidden_fast, hidden, atol=1e-4, rtol=1e-4)
        assert (fast.length, fast.seen) == (plain.length, plain.seen)
        assert torch.equal(fast.pos[:, :fast.length], plain.pos[:, :plain.length])
        if i == evict_at:  # the same eviction in both: the step keeps reading the live slots only
            idx = torch.stack([torch.randperm(plain.length)[:40].sort().values for _ in range(B)])
            plain.keep(idx), P.keep_in_place(fast, idx)
        token = logits.argmax(dim=-1, keepdim=True)


def test_graphed_step_matches_gpt_forward_across_an_eviction():
    check_graphed_step(P)


@torch.no_grad()
def test_graphed_scoring_matches_policy_observe():
    """DynTS scoring as --cuda-graphs runs it (eagerly here) against Policy.observe, eviction included."""
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    model, predictor = GPT(cfg).eval(), P.dynts.ImportancePredictor(cfg.n_embd).eval()
    B, prompt = 2, torch.randint(0, 256, (2, 12))
    caches, policies = [], []
    for _ in range(2):
        caches.append(KVCache(cfg, B, 48))
        policies.append(P.dynts.DynTS(48, 8, 0.3, predictor, prompt_len=12, end_think_id=258, eot_id=256))
        policies[-1].reset(B, 48)
        _, hidden, _ = model(prompt, caches[-1])
        policies[-1].observe(prompt, hidden, torch.arange(12))
    step = P.GraphedDecode(model, caches[1], capture=False)
    observe = P.GraphedObserve(policies[1], step, capture=False)
    token = torch.randint(0, 256, (B, 1))
    for i in range(80):
        logits, hidden, _ = model(token, caches[0])
        policies[0].observe(token, hidden, torch.arange(caches[0].seen - 1, caches[0].seen))
        _, hidden_fast, _ = step(token, caches[1])
        observe(token, hidden_fast, None)
        assert policies[1].length == policies[0].length == caches[0].length
        torch.testing.assert_close(policies[1].scores[:, :policies[1].length],
                                   policies[0].scores[:, :policies[0].length], atol=1e-4, rtol=1e-4)
        if policies[0].should_evict(caches[0].length):
            idx = policies[0].select()  # the same slots in both
            for cache, policy in zip(caches, policies):
                cache.keep(idx), policy.keep(idx)
        token = logits[:, :256].argmax(dim=-1, keepdim=True)  # bytes only: the thinking never ends


INTERPRETED = """
import math, sys, torch
sys.path.insert(0, {tests!r})
from model import PRESETS, KVCache
from test_profile import load_profile, check_graphed_step
P = load_profile()
torch.manual_seed(0)
B, H, Hkv, D, cap, chunk = 2, 8, 2, 32, 300, 64
kv = torch.randn(2, 2, B, Hkv, cap, D)  # (layer, k|v, B, Hkv, cap, D), as in the cache
n_splits = math.ceil(cap / chunk)
partial = (torch.empty(B * H * n_splits, D), torch.empty(B * H * n_splits, 2))
for n in [1, 63, 64, 65, 200, 300]:
    qkv = torch.randn(B, (H + 2 * Hkv) * D + 7)  # rows apart, as q, k, v sliced from c_attn's output
    q, k_new, v_new = (qkv[:, a * D:b * D].view(B, -1, D) for a, b in [(0, H), (H, H + Hkv), (H + Hkv, H + 2 * Hkv)])
    expected = kv.clone()
    expected[1, 0, :, :, n - 1], expected[1, 1, :, :, n - 1] = k_new, v_new
    y = P.decode_attention(q, k_new, v_new, kv[1, 0], kv[1, 1], torch.tensor([n]), partial, chunk)
    assert torch.equal(kv, expected)  # the new K and V at slot n - 1, nothing else written
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.unsqueeze(2), expected[1, 0, :, :, :n], expected[1, 1, :, :, :n], enable_gqa=True).squeeze(2)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
for n in [1, 40, 64, 65, 150]:  # the in-place compaction against KVCache.keep
    a, b = KVCache(PRESETS["tiny"], 3, 150), KVCache(PRESETS["tiny"], 3, 150)
    a.kv.normal_(), a.pos.copy_(torch.randperm(450).view(3, 150)), b.kv.copy_(a.kv), b.pos.copy_(a.pos)
    a.length = b.length = 150
    idx = torch.stack([torch.randperm(150)[:n].sort().values for _ in range(3)])
    a.keep(idx), P.keep_in_place(b, idx)
    assert b.length == n and torch.equal(b.kv[:, :, :, :, :n], a.kv[:, :, :, :, :n]) and torch.equal(b.pos, a.pos)
check_graphed_step(P, steps=12, evict_at=6, chunk=16)  # the kernels inside the whole step
print("ok")
"""


def test_decode_attention_kernel_in_the_triton_interpreter():
    """The kernels of --cuda-graphs, run by Triton's CPU interpreter: attention against SDPA, and the
    whole step against GPT.forward.
    A subprocess: the interpreter must be on before triton is first imported."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", INTERPRETED.format(tests=os.path.join(ROOT, "tests"))], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
