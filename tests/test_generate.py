"""generate.py: whole generations under each policy, and the command line's errors."""

import io
import json
import os
import subprocess
import sys

import pytest
import torch

import dynts
import generate
from model import GPT, GPTConfig, get_encoding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = GPTConfig(block_size=512, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=64)
ENC = get_encoding()


def tiny(seed=0, sharp=False):
    torch.manual_seed(seed)
    model = GPT(CFG).eval()
    if sharp:  # GPT-2's init barely lets a random model attend: scale it up until the context matters
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(8)
    return model, dynts.ImportancePredictor(CFG.n_embd).eval()


def run(policy_name, budget, window, ratio=0.3, n=200, B=1, temperature=0.0, seed=0, prompt_len=12, sharp=False):
    model, predictor = tiny(seed, sharp)
    prompt = list(range(40, 40 + prompt_len))
    policy = generate.make_policy(policy_name, budget, window, ratio, predictor, len(prompt), ENC)
    seen_caches = []

    def on_evict(before, cache):
        assert before <= budget
        pos = cache.pos[:, :cache.length]
        assert (pos[:, 1:] > pos[:, :-1]).all()  # positions strictly increase inside the cache
        assert (cache.pos[:, cache.length - 1] == cache.seen - 1).all()  # the newest token stays
        seen_caches.append(cache.length)

    gen = torch.Generator().manual_seed(seed)
    tokens, stats = generate.generate(model, prompt, policy, n, B, temperature, None,
                                      eot_id=None, vocab_limit=256, generator=gen, on_evict=on_evict)
    return tokens, stats, seen_caches


@pytest.mark.parametrize("name", ["window", "streaming", "dynts"])
@pytest.mark.parametrize("B", [1, 3])
def test_the_cache_never_holds_more_than_its_budget(name, B):
    tokens, stats, evictions = run(name, budget=48, window=8, B=B, temperature=1.0)
    assert tokens.shape == (B, 200)
    assert stats["peak_kv_tokens"] == 48 and stats["evictions"] == len(evictions) >= 5
    # the buffers hold the budget, not the sequence: float32 keys and values, long positions
    assert stats["kv_allocated_bytes"] == B * 48 * (CFG.n_layer * 2 * CFG.n_kv_head * CFG.head_dim * 4 + 8)
    assert all(n < 48 for n in evictions)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_dynts_with_a_budget_above_the_sequence_generates_exactly_what_full_generates(temperature):
    full, s_full, _ = run("full", None, 0, n=150, B=2, temperature=temperature, sharp=True)
    dyn, s_dyn, _ = run("dynts", 400, 16, n=150, B=2, temperature=temperature, sharp=True)
    assert s_dyn["evictions"] == 0
    assert torch.equal(full, dyn)


def test_evicting_changes_what_is_generated():
    """The counterpart of the test above, so that it could fail: a tight budget does change the
    greedy continuation of a random model."""
    full, _, _ = run("full", None, 0, n=150, sharp=True)
    dyn, _, _ = run("dynts", 32, 4, n=150, sharp=True)
    assert len(set(full[0].tolist())) > 10  # not a constant sequence
    assert not torch.equal(full, dyn)


def test_batch_rows_keep_their_own_tokens():
    model, predictor = tiny()
    policy = generate.make_policy("dynts", 40, 4, 0.5, predictor, 10, ENC)
    kept = []
    generate.generate(model, list(range(60, 70)), policy, 80, num_samples=3, temperature=1.0, vocab_limit=256,
                      generator=torch.Generator().manual_seed(1),
                      on_evict=lambda before, cache: kept.append(cache.pos[:, :cache.length].clone()))
    assert kept and any(not torch.equal(k[0], k[1]) or not torch.equal(k[1], k[2]) for k in kept)
    assert all(k.shape[0] == 3 for k in kept)  # every row the same count


def test_rows_stop_at_end_of_text_and_pad_with_it():
    model, predictor = tiny()
    with torch.no_grad():  # every final hidden state is all ones; end-of-text gets p ~ 0.3
        model.ln_f.weight.zero_()
        model.ln_f.bias.fill_(1.0)
        model.wte.weight[ENC.eot_token] = 4.7 / CFG.n_embd
    tokens, _ = generate.generate(model, [1, 2, 3], dynts.Full(), 50, num_samples=4, temperature=1.0,
                                  eot_id=ENC.eot_token, generator=torch.Generator().manual_seed(0))
    assert tokens.shape[1] < 50
    for row in tokens.tolist():
        first = row.index(ENC.eot_token)
        assert row[first:] == [ENC.eot_token] * (len(row) - first)
    assert len({row.index(ENC.eot_token) for row in tokens.tolist()}) > 1  # rows end at different steps


# -----------------------------------------------------------------------------
# The command line


def test_cli_runs_on_cpu_and_writes_stats(tmp_path):
    out = io.StringIO()
    path = tmp_path / "stats.json"
    stats = generate.main(policy="dynts", init="random", preset="tiny", budget=80, window=16,
                          max_new_tokens=120, num_samples=2, temperature=1.0, device="cpu",
                          stats_json=str(path), out=out)
    text = out.getvalue()
    assert text.startswith("Question:") and "[evict 80->" in text
    assert "policy dynts (budget 80, window 16, ratio 0.3)" in text and "tokens/s" in text
    saved = json.loads(path.read_text())
    assert saved["evictions"] == stats["evictions"] >= 1 and saved["peak_kv_tokens"] == 80


BAD = [
    (["--dynts", "--budget", "100", "--window", "100"], "--window"),
    (["--dynts", "--budget", "100", "--window", "10", "--ratio", "0"], "--ratio"),
    (["--dynts", "--budget", "100", "--window", "10", "--ratio", "1.5"], "--ratio"),
    (["--dynts", "--budget", "60", "--window", "20"], "protected prompt"),
    (["--dynts", "--budget", "20"], "--budget 20 must exceed the prompt"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--max-new-tokens", "5000"], "block_size"),
    (["--num-samples", "0"], "--num-samples"),
    (["--temperature", "-1"], "--temperature"),
    (["--top-k", "0"], "--top-k"),
    (["--preset", "huge"], "--preset"),
    (["--prompt", ""], "--prompt"),
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"),
    (["--temperature", "1e-310"], "--temperature"),
    (["--seed", str(2**70)], "--seed"),
    (["--prompt", "x" * 5000], "leave no room below the model's block_size"),
    (["--policy", "full", "--ratio", "7"], "--ratio"),
    (["--prompt", "hi", "--problem", "3"], "--prompt and --problem"),
    (["--problem", "100000000"], "--problem"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[m for _, m in BAD])
def test_cli_bad_input_is_one_line_naming_the_flag(argv, message):
    with pytest.raises(SystemExit) as e:
        generate.cli(argv + ["--init", "random", "--device", "cpu"])
    assert isinstance(e.value.code, str), "exits non-zero with a message"
    assert message in e.value.code and "\n" not in e.value.code


@pytest.mark.parametrize("device", ["tpu", "mps", "meta", "", "cuda:7", "cpu:0"])
def test_cli_bad_device_is_one_line_listing_what_is_accepted(device):
    with pytest.raises(SystemExit) as e:
        generate.cli(["--init", "random", "--device", device])
    assert isinstance(e.value.code, str) and "\n" not in e.value.code
    assert f"--device {device!r}" in e.value.code or f"--device {device}:" in e.value.code
    assert "cpu" in e.value.code


def test_cli_missing_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(SystemExit) as e:
        generate.cli(["--dynts", "--ckpt", str(tmp_path / "nope.pt"), "--device", "cpu"])
    assert "nope.pt" in e.value.code and "python train.py" in e.value.code


def test_cli_bad_input_in_a_real_process_has_no_traceback():
    p = subprocess.run([sys.executable, "generate.py", "--dynts", "--init", "random", "--device", "cpu",
                        "--budget", "100", "--window", "10", "--ratio", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert p.stderr.strip().count("\n") == 0 and "--ratio" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("name", generate.POLICIES)
def test_only_attention_based_policies_make_the_model_compute_attention(name, monkeypatch):
    import model as model_module
    calls = []
    real = model_module.attention_with_probs
    monkeypatch.setattr(model_module, "attention_with_probs", lambda *a: calls.append(1) or real(*a))
    tokens, stats, _ = run(name, None if name == "full" else 48, 8, n=60)
    policy = generate.make_policy(name, 48, 8, 0.3, dynts.ImportancePredictor(CFG.n_embd), 12, ENC)
    assert bool(calls) == policy.needs_attention == (name.removesuffix("+p") in ("h2o", "h2o-last", "snapkv", "rkv"))
    assert stats["peak_kv_tokens"] <= (48 if name != "full" else 72)
