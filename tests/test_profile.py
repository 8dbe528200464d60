"""profile.py, timing.py and costs.py: the stdlib shim, the analytic counts, the jumps, the decode loop's
bookkeeping, the CLI and the figure. The --cuda-graphs step itself (fastpath.py) is tested in tests/test_fastpath.py."""

import importlib.util
import io
import json
import math
import os
import subprocess
import sys

import pytest
torch = pytest.importorskip("torch")

from lab import cli
from lab import costs
import dynts
from lab import fastpath
from lab import timing
from lab.cli import cache_bytes, weight_bytes
from model import GPT, PRESETS, GPTConfig, KVCache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The Llama family's blocks at the tiny preset's size (RMSNorm, SwiGLU, RoPE, GQA, no biases).
TINY_LLAMA = GPTConfig(block_size=2048, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=176, norm="rmsnorm",
                       mlp="swiglu", positions="rope", bias=False)


def load_profile(name="dynts_profile"):
    """Our profile.py, loaded by path: `import profile` may already be the standard library's."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "profile.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


P = load_profile()
TINY = dict(preset="tiny", batch_size=2, prompt_len=16, steps=40, budget=40, window=8, every=10, tput_window=10,
            device="cpu")


def python_in_root(code: str) -> str:
    """Run `code` in a fresh Python from the repository root (where profile.py shadows the
    standard library's), returning its stdout; it must exit cleanly."""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_cprofile_profile_and_torch_compile_work_from_the_repo_root():
    code = ("import cProfile, profile, torch\n"
            "assert profile.__file__.endswith('profile.py')\n"
            "cProfile.run('sum(range(10))')\n"
            "profile.run('sum(range(10))')\n"
            "print(torch.compile(lambda x: x + 1, backend='eager')(torch.ones(2)).tolist())\n"
            "print(profile.__file__)")
    out = python_in_root(code)
    assert "[2.0, 2.0]" in out
    assert out.strip().splitlines()[-1] == os.path.join(ROOT, "profile.py")  # ours, standing in for the stdlib's


def test_cprofile_works_from_the_repo_root_without_torch():
    """A Python without this project's packages (torch missing) still gets the standard library's
    profile, through ours, and so cProfile."""
    code = ("import sys; sys.modules['torch'] = None  # as if torch were not installed\n"
            "import cProfile, profile\n"
            "cProfile.run('sum(range(10))')\n"
            "profile.run('sum(range(10))')\n"
            "print(profile.__file__)")
    assert python_in_root(code).strip().splitlines()[-1] == os.path.join(ROOT, "profile.py")


def test_analytic_counts_match_the_formula():
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=64, n_layer=3, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=48)
    model = GPT(cfg)
    a = costs.analytic(model)
    C, kv = cfg.n_embd, cfg.n_kv_head * cfg.head_dim
    per_layer = C * (C + 2 * kv) + C * C + 2 * C * cfg.mlp_hidden  # qkv, attention proj, MLP
    assert a["matmul_params"] == cfg.n_layer * per_layer + cfg.vocab_size * C  # + the tied LM head
    assert a["kv_slot_bytes_per_row"] == cfg.n_layer * 2 * kv * 4  # K and V of all layers, one row, float32
    live = 17
    assert costs.flops_per_token(a, live, False) == 2 * a["matmul_params"] + 4 * cfg.n_layer * C * live
    pred = dynts.ImportancePredictor(C)
    a = costs.analytic(model, pred)
    assert a["predictor_matmul_params"] == C * 2 * C + 2 * C * C // 2 + C // 2
    with_pred = costs.flops_per_token(a, live, True)
    assert with_pred - costs.flops_per_token(a, live, False) == 2 * a["predictor_matmul_params"]
    everything = sum(p.numel() for p in model.parameters()) * 4
    assert a["weight_bytes"] == everything - cfg.block_size * C * 4 + C * 4  # one learned-position row read
    read = a["weight_bytes"] + a["predictor_bytes"] + 5 * live * a["kv_slot_bytes_per_row"]  # 5 rows
    assert costs.bytes_per_step(a, live, True, 5) == read


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
    assert [r["timed"] for r in res["marks"]["full"]] == [[1, 10], [11, 20], [21, 30], [31, 40]]
    assert all(r["jumped_to"] == 0 and r["batch"] == 2 for r in res["marks"]["full"])  # every step decoded
    row = res["marks"]["dynts"][-1]
    assert row["gflops_per_token"] == pytest.approx(costs.flops_per_token(a, dyn["kv_read"][-1], True) / 1e9)
    assert row["tokens_per_s"] == pytest.approx(2 * 10 / sum(dyn["step_s"][-10:]))
    assert 0 < row["roofline_fraction"] and 0 <= row["policy_share"] <= 1
    m = {x["step"]: x for x in res["multipliers"]["dynts"]}[40]
    assert m["kv_live"] == pytest.approx(dyn["kv_held"][-1] / full["kv_held"][-1])
    assert m["speedup_efficiency"] == pytest.approx(m["throughput"] / m["bytes_allowed_speedup"])
    text = out.getvalue()
    assert "dynts / full, batch 2 / 2:" in text and "window / full, batch 2 / 2:" in text and "% of decode time" in text
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
    (["--preset", "tiny", "--batch-size", "max"], "--batch-size max fills a GPU's free memory: it needs a CUDA device"),
    (["--preset", "tiny", "--batch-size", "many"], "--batch-size must be a number or max, got 'many'"),
    (["--preset", "tiny", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--preset", "tiny", "--jump", "--every", "0"], "--every must be >= 1"),
    # the eviction cycle that holds step 1990 (every 210 steps from 450) runs past the block_size, 2048
    (["--preset", "tiny", "--jump", "--steps", "1990", "--policies", "dynts", "--batch-size", "1"],
     "dynts's last window ends at step 2130, past the block_size 2048"),
])
def test_bad_inputs_exit_with_one_line(argv, message):
    with pytest.raises(SystemExit) as e:
        P.cli(argv + ["--device", "cpu"])
    assert str(e.value.code).startswith("profile.py: error: ") and message in str(e.value.code)
    assert "\n" not in str(e.value.code)


def test_read_bandwidth_is_a_positive_finite_rate_on_the_cpu():
    bandwidth = timing.read_bandwidth(torch.device("cpu"), 2 ** 22)
    assert math.isfinite(bandwidth) and bandwidth > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_requested_without_cuda_is_an_error(monkeypatch):
    r = subprocess.run([sys.executable, "profile.py", "--preset", "tiny", "--device", "cuda"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and r.stderr.strip() == "profile.py: error: --device cuda: CUDA is not available on this machine (use cpu)"
    monkeypatch.setitem(P.PRESETS, "tiny-llama", TINY_LLAMA)
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
    P.main(**TINY, jump=True, plot_path=str(tmp_path / "jump.png"), out=io.StringIO())  # steps jumped over: gaps
    assert (tmp_path / "jump.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -----------------------------------------------------------------------------
# --jump: the state after `step` steps, without decoding them


SPECIAL = torch.tensor([256, 257, 258])  # the byte encoding's end-of-text, <think>, </think>: never sampled


def decode(model, policy, cache, token, steps, forward=None, observe=None):
    """Decode `steps` greedy tokens as generate.py does: after each step, (the cache's length, evicted?)."""
    forward, observe, out = forward or model, observe or policy.observe, []
    for _ in range(steps):
        logits, hidden, _ = forward(token, cache)
        observe(token, hidden, torch.arange(cache.seen - 1, cache.seen))
        evict = policy.should_evict(cache.length)
        if evict:
            policy.evict(cache)
        out.append((cache.length, evict))
        token = logits.index_fill(1, SPECIAL, float("-inf")).argmax(dim=-1, keepdim=True)  # (B, 1)
    return out


def tiny_dynts(model, B, P_len, budget, window):
    """A fresh DynTS policy (its predictor seeded: the same in every call) and cache, reset for a generation."""
    torch.manual_seed(1)
    policy = dynts.DynTS(budget, window, 0.3, P_len, dynts.ImportancePredictor(model.config.n_embd).eval(),
                         end_think_id=258, eot_id=256)
    cache = KVCache(model.config, B, budget)
    policy.reset(B, budget)
    return policy, cache


@torch.no_grad()
def test_jump_leaves_the_state_a_real_decode_leaves():
    """A real prefill and decode against a jump to the same step: the same cache and policy lengths,
    the same positions where the policy decides them (the protected prompt, the window), the same
    flags and protected count; decoding on from there evicts at the same steps, to the same lengths."""
    B, P_len, budget, window, steps = 3, 16, 40, 8, 80
    torch.manual_seed(0)
    model = GPT(PRESETS["tiny"]).eval()
    policy, cache = tiny_dynts(model, B, P_len, budget, window)
    prompt = torch.randint(0, 256, (B, P_len))
    logits, hidden, _ = model(prompt, cache)  # a real prefill, as generate.py does
    policy.observe(prompt, hidden, torch.arange(P_len))
    token = logits.index_fill(1, SPECIAL, float("-inf")).argmax(dim=-1, keepdim=True)
    real, states = [], {}
    for s in range(steps + 1):  # the state after step s, then step s + 1
        states[s] = (cache.length, cache.seen, cache.pos[:, :cache.length].clone(), policy.answering.clone(),
                     policy.done.clone(), int((policy.ranking(cache) == float("inf")).sum()))
        real += decode(model, policy, cache, token, 1)
        token = torch.randint(0, 256, (B, 1))  # (lengths do not depend on the tokens)
    first, kept = budget - P_len, window + P_len  # the first eviction; what each keeps: the window, the prompt
    cycle = budget - kept
    assert [i + 1 for i, (_, e) in enumerate(real) if e] == list(range(first, steps + 2, cycle))

    for s in [0, 10, first - 1, first, first + 5, first + cycle, first + 2 * cycle - 1]:
        jp, jc = tiny_dynts(model, B, P_len, budget, window)
        buffers = (jp.scores, jp.positions, jp.answering, jp.done, jc.kv, jc.pos)
        timing.jump(jc, jp, s, P_len, model.config.n_embd, cycle)
        length, seen, pos, answering, done, protected = states[s]
        assert (jc.length, jc.seen, jp.length) == (length, seen, length), s
        assert torch.equal(jc.pos[:, :length], jp.positions[:, :length])  # the cache and the policy agree
        assert torch.equal(jc.pos[:, :P_len], pos[:, :P_len])  # the prompt
        assert torch.equal(jc.pos[:, length - window:length], pos[:, length - window:])  # the window
        assert bool((jc.pos[:, 1:length] > jc.pos[:, :length - 1]).all()) and int(jc.pos[:, :length].max()) < seen
        assert torch.equal(jp.answering, answering) and torch.equal(jp.done, done) and not answering.any()
        assert int((jp.ranking(jc) == float("inf")).sum()) == protected == B * P_len
        assert all(x is y for x, y in zip(buffers, (jp.scores, jp.positions, jp.answering, jp.done, jc.kv, jc.pos)))
        assert decode(model, jp, jc, torch.randint(0, 256, (B, 1)), cycle + 3) == real[s:s + cycle + 3], s


@torch.no_grad()
def test_jumps_under_the_fast_paths_step_objects():
    """The fast path's step and scoring (run eagerly: capture=False) are built once, on the first
    jump's state, as profile.py builds them; jumps after it write in place, so they see them."""
    B, P_len, budget, window = 2, 16, 40, 8
    torch.manual_seed(0)
    model = GPT(PRESETS["tiny"]).eval()
    policy, cache = tiny_dynts(model, B, P_len, budget, window)
    prompt = torch.randint(0, 256, (B, P_len))
    logits, hidden, _ = model(prompt, cache)
    policy.observe(prompt, hidden, torch.arange(P_len))
    real = decode(model, policy, cache, logits.argmax(dim=-1, keepdim=True), 80)
    jp, jc = tiny_dynts(model, B, P_len, budget, window)
    timing.jump(jc, jp, 5, P_len, model.config.n_embd, 16)
    forward = fastpath.GraphedDecode(model, jc, capture=False)
    observe = fastpath.GraphedObserve(jp, forward, capture=False)
    for s in [5, 24, 56]:  # before the first eviction, then two eviction cycles (16 steps)
        timing.jump(jc, jp, s, P_len, model.config.n_embd, 16)
        assert decode(model, jp, jc, torch.randint(0, 256, (B, 1)), 20, forward, observe) == real[s:s + 20], s


def test_main_jump_decodes_each_marks_window_with_a_full_decodes_lengths(tmp_path):
    out, path = io.StringIO(), tmp_path / "jump.json"
    kw = dict(TINY, steps=90, policies="full,dynts,window")
    full = P.main(**kw, out=io.StringIO())
    jumped = P.main(**dict(kw, tput_window=5), jump=True, json_path=str(path), out=out)  # (marks: every 10 steps)
    prompt, budget, window = TINY["prompt_len"], TINY["budget"], TINY["window"]
    for name, rec in jumped["records"].items():
        ref = full["records"][name]
        decoded = [i for i, t in enumerate(rec["step_s"]) if t is not None]
        assert decoded and all(rec["kv_read"][i] == ref["kv_read"][i] and rec["kv_held"][i] == ref["kv_held"][i]
                               for i in decoded if i < len(ref["kv_read"]))
        assert len(decoded) < len(rec["step_s"]) and rec["decoded"][0] == [5, 10]
    dyn = jumped["records"]["dynts"]
    first, cycle = budget - prompt, budget - (window + prompt)
    assert dyn["eviction_cycle"] == cycle
    rows = {r["step"]: r for r in jumped["marks"]["dynts"]}
    assert rows[20]["timed"] == [16, 20] and rows[20]["jumped_to"] == 15  # before the first eviction: the window
    assert rows[30]["timed"] == [first + 1, first + cycle] == rows[40]["timed"]  # after it: the cycle that holds it
    assert rows[90]["timed"] == [first + 4 * cycle + 1, first + 5 * cycle]
    assert rows[90]["jumped_to"] == first + 4 * cycle
    assert dyn["evictions"] == len({tuple(r["timed"]) for r in rows.values() if r["timed"][0] > first})  # one a cycle
    assert rows[90]["kv_held"] == full["records"]["dynts"]["kv_held"][89]
    text = out.getvalue()
    assert "jumping to each mark" in text and "   57-72*" in text and "(one every 16 steps)" in text
    saved = json.loads(path.read_text())
    assert saved["config"]["jump"] and saved["marks"]["dynts"][2]["timed"] == [first + 1, first + cycle]


def test_a_jumped_mark_is_timed_over_whole_eviction_cycles_of_at_least_the_window():
    """Before the first eviction, the tput_window steps up to the mark; after it, the cycle that
    holds the mark, or as many whole cycles as make tput_window steps (H2O native: one a step)."""
    policy = dynts.Policy(budget=500, window=200, ratio=0.3, prompt_len=50)  # first evicts after 450 steps
    assert timing.timed_spans(policy, [400, 600], 50, 100, cycle=210) == {400: (300, 400), 600: (450, 660)}
    assert timing.timed_spans(policy, [600], 50, 100, cycle=1) == {600: (599, 699)}
    assert timing.timed_spans(policy, [600], 50, 100, cycle=64) == {600: (578, 706)}  # two cycles of 64


def test_max_batch_against_a_hand_computation():
    cfg, elt, free = PRESETS["r1-llama-8b"], 2, 79 * 2**30  # an 80 GB H100 with 79 GiB free
    fixed = weight_bytes(cfg, elt) + 50_343_937 * elt  # the weights and the predictor (4096 -> 8192 -> 2048 -> 1)
    kv = 32 * 2 * 8 * 128 * elt  # K and V of one slot, 32 layers, 8 KV heads of 128
    for capacity, expected in [(500 + 15000, 31), (5000, 98)]:  # full; DynTS at the paper's budget
        row = (kv * capacity + capacity * (8 + 4 + 8)  # the cache; its positions, the policy's scores and positions
               + 128256 * elt  # the logits
               + elt * (3 * 14336 + 5 * 4096)  # one layer's activations
               + 32 * -(-capacity // 512) * (128 + 2) * 4)  # the attention kernel's float32 partials (at most)
        assert costs.row_bytes(cfg, capacity, elt, cuda_graphs=True) == row
        B = costs.max_batch(cfg, capacity, elt, free, fixed, cuda_graphs=True)
        usable = int(free * 0.95)
        assert B == expected and fixed + B * row <= usable < fixed + (B + 1) * row  # fits; one more row does not
    assert costs.row_bytes(cfg, 5000, elt, cuda_graphs=False) == row - 32 * 10 * 130 * 4  # no partials, plain path
    assert costs.max_batch(cfg, 5000, elt, fixed, fixed, True) == 0  # nothing left beside the weights


def test_memory_gib_sizes_the_rows_but_the_weights_are_measured_against_what_was_free(monkeypatch):
    """--memory-gib G: the rows fill G GiB, less the margin, beside what the weights took; what they
    took is still measured from the memory free before they were built (not from G)."""
    cfg, elt, free, used = PRESETS["r1-llama-8b"], 2, 139 * 2**30, 16 * 2**30  # an H200, 16 GiB taken by the weights
    monkeypatch.setattr(costs, "free_bytes", lambda device: free - used)
    capacities = {"full": 15500, "dynts": 5000}
    batches, fixed = costs.equal_memory_batches(cfg, capacities, elt, free, 0, "cpu", True, limit=int(78.7 * 2**30))
    assert fixed == used
    assert batches == {n: costs.max_batch(cfg, c, elt, int(78.7 * 2**30), used, True) for n, c in capacities.items()}
    assert batches["full"] < costs.equal_memory_batches(cfg, capacities, elt, free, 0, "cpu", True)[0]["full"]


def test_memory_check_counts_the_float32_build_apart_from_the_cache(monkeypatch):
    """The model is built in float32 and cast before the cache exists: a batch needs the larger of
    the two, not their sum (which refused batches that fit, e.g. r1-llama-8b at 94 rows on an H100)."""
    cfg, run = PRESETS["tiny"], dict(TINY, policies="full", steps=10, every=10, tput_window=5, dtype="bfloat16")
    need = max(weight_bytes(cfg), weight_bytes(cfg, 2) + cache_bytes(cfg, 2, 16 + 10, 2))
    assert need < weight_bytes(cfg) + cache_bytes(cfg, 2, 16 + 10, 2)  # (the sum, which the check once used)
    monkeypatch.setattr(cli, "free_bytes", lambda device: need)
    assert P.main(**run, out=io.StringIO())["batch_sizes"] == {"full": 2}
    monkeypatch.setattr(cli, "free_bytes", lambda device: need - 1)
    with pytest.raises(cli.UsageError, match=r"--batch-size 2: .* a KV cache of 2 x 26 slots\) needs"):
        P.main(**run, out=io.StringIO())


def test_progress_lines_while_decoding(monkeypatch):
    monkeypatch.setattr(P, "PROGRESS_S", 0)
    out = io.StringIO()
    P.main(**dict(TINY, steps=12, every=12, policies="dynts"), jump=True, out=out)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("  ... dynts:")]
    assert len(lines) == 10 and lines[-1].startswith("  ... dynts: 10 of 10 steps decoded,")  # (the mark's window)
    assert "tokens/s so far, ~0 s left" in lines[-1]


def test_full_alone_says_it_ignores_the_budget_and_window(capsys):
    P.main(**dict(TINY, policies="full", steps=10), out=io.StringIO())
    assert "note: full never evicts; --budget and --window ignored" in capsys.readouterr().err
