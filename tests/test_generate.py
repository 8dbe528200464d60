"""generate.py: whole generations under each policy, and the command line's errors."""

import io
import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
torch = pytest.importorskip("torch")

import dynts
import generate
from lab import checkpoint, hf, policies
from lab.cli import UsageError
from model import GPT, GPTConfig, get_encoding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")  # tiny Llama 3 and Qwen2 checkpoints (tests/test_hf.py)
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
    policy = policies.make_policy(policy_name, budget, window, ratio, len(prompt), predictor, ENC)
    seen_caches = []

    def on_step(cache, eviction):
        if eviction is None:
            return
        kept, ranking = eviction
        before = ranking.shape[1]  # the cache's length before the eviction
        assert before <= budget and kept.shape == (B, cache.length)
        pos = cache.pos[:, :cache.length]
        if policy_name.startswith("h2o-native"):  # one slot moved a step: the slots are not in position order
            pos = pos.sort(dim=1).values
        assert (pos[:, 1:] > pos[:, :-1]).all()  # positions strictly increase inside the cache (or once sorted)
        assert (pos[:, -1] == cache.seen - 1).all()  # the newest token stays
        seen_caches.append(cache.length)

    gen = torch.Generator().manual_seed(seed)
    tokens, stats = generate.generate(model, prompt, policy, n, B, temperature, None,
                                      eot_id=None, vocab_limit=256, generator=gen, on_step=on_step)
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
    policy = policies.make_policy("dynts", 40, 4, 0.5, 10, predictor, ENC)
    kept = []
    generate.generate(model, list(range(60, 70)), policy, 80, num_samples=3, temperature=1.0, vocab_limit=256,
                      generator=torch.Generator().manual_seed(1),
                      on_step=lambda cache, eviction: eviction is not None
                      and kept.append(cache.pos[:, :cache.length].clone()))
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
    # Asking whether all rows finished only every 16 steps (eval.py) gives the same tokens.
    lazy, _ = generate.generate(model, [1, 2, 3], dynts.Full(), 50, num_samples=4, temperature=1.0,
                                eot_id=ENC.eot_token, generator=torch.Generator().manual_seed(0), check_every=16)
    assert torch.equal(lazy, tokens)


LLAMA_CFG = GPTConfig(block_size=512, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=48, bias=False,
                      norm="rmsnorm", mlp="swiglu", positions="rope", tie_embeddings=False)


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_prompts_of_different_lengths_are_refused(cuda_graphs):
    """One batch, one prompt length: generate refuses prompts of different lengths (lab/eval.py
    groups them by length) and says so, before any decoding."""
    model, predictor = tiny()
    for prompts in ([[1, 2, 3], [4, 5]], [[1, 2], [3, 4, 5, 6], [7, 8]]):
        for policy in (dynts.Full(), policies.make_policy("dynts", 40, 4, 0.5, 2, predictor, ENC)):
            with pytest.raises(ValueError, match="of one length"):
                generate.generate(model, prompts, policy, 5, cuda_graphs=cuda_graphs)
    with pytest.raises(ValueError, match="of one length"):
        generate.generate(model, torch.randint(0, 256, (2, 3)).tolist() + [[1]], dynts.Full(), 5)
    tokens, _ = generate.generate(model, [[1, 2, 3], [4, 5, 6]], dynts.Full(), 5)  # one length: decoded
    assert tokens.shape == (2, 5)


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
    assert " older thinking tokens) | " in text  # what each eviction kept of the generated tokens
    saved = json.loads(path.read_text())
    assert saved["evictions"] == stats["evictions"] >= 1 and saved["peak_kv_tokens"] == 80


@pytest.mark.parametrize("name,noted", [("h2o+p", True), ("rkv-native+p", False), ("h2o-native+p", False)])
def test_the_prompt_fills_older_note_only_where_ratio_decides(name, noted, capsys):
    """Budget 120, window 60: floor(0.3 x 60) = 18 older slots, fewer than the protected prompt.
    A policy that cuts by the ratio then keeps no older generated token, and is told so; one on
    its own schedule (R-KV's buffer, H2O's one a step) is not cut by the ratio, and is not."""
    generate.main(policy=name, init="random", preset="tiny", budget=120, window=60, max_new_tokens=4,
                  device="cpu", out=io.StringIO())
    assert ("every eviction keeps the prompt and the window" in capsys.readouterr().err) == noted


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
    (["--dynts", "--policy", "h2o"], "--dynts is short for --policy dynts"),  # settings one would silently drop
    (["--top-k", "5"], "--top-k 5 samples; at temperature 0"),  # a random model decodes greedily by default
    (["--ckpt", "x.pt"], "--ckpt and --init random"),
    (["--policy", "rkv-native", "--ratio", "0.5"], "--ratio: --policy rkv-native keeps what its own schedule"),
    (["--policy", "dynts-buffer", "--ratio", "0.5"], "--ratio: --policy dynts-buffer keeps what its own schedule"),
    (["--policy", "dynts,h2o-native", "--ratio", "0.5"], "--ratio: --policy h2o-native"),
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
    assert "nope.pt" in e.value.code and "python -m lab.train" in e.value.code


def test_cli_bad_input_in_a_real_process_has_no_traceback():
    p = subprocess.run([sys.executable, "generate.py", "--dynts", "--init", "random", "--device", "cpu",
                        "--budget", "100", "--window", "10", "--ratio", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert p.stderr.strip().count("\n") == 0 and "--ratio" in p.stderr and "Traceback" not in p.stderr


# -----------------------------------------------------------------------------
# --hf: a Hugging Face checkpoint folder


def predictor_file(path, fixture: str, decoding: dict) -> str:
    """A predictor-only checkpoint with random weights, in the format train.py --hf writes."""
    config = hf.config_from_hf(os.path.join(FIXTURES, fixture, "config.json"))
    torch.manual_seed(0)
    torch.save(dict(kind="dynts-predictor", config=asdict(config), model_dir=os.path.join(FIXTURES, fixture),
                    predictor=dynts.ImportancePredictor(config.n_embd).state_dict(), label_scale=1e4,
                    decoding=decoding, metrics={}), path)
    return str(path)


@pytest.mark.parametrize("fixture", ["hf-llama", "hf-qwen2"])
def test_hf_checkpoint_generates_under_full_and_dynts(fixture, tmp_path, monkeypatch, capfd):
    folder = os.path.join(FIXTURES, fixture)
    _, enc, meta = hf.load_hf(folder)
    question = "What is 12 + 30?"
    ids = hf.chat_prompt(question, enc, meta["bos"])
    calls = []  # what main hands generate(): the policy, and the id it stops at
    real = generate.generate
    monkeypatch.setattr(generate, "generate", lambda *a, **k: calls.append((a[2], k["eot_id"])) or real(*a, **k))

    generate.cli(["--hf", folder, "--prompt", question, "--max-new-tokens", "20", "--device", "cpu"])
    text = capfd.readouterr().out
    assert text.startswith(enc.decode(ids)) and "policy full" in text and "on cpu (float32)" in text
    assert calls[-1][1] == meta["eos_id"]

    path = predictor_file(tmp_path / "predictor.pt", fixture, dict(budget=len(ids) + 6, window=4, ratio=0.3))
    stats = generate.main(hf=folder, predictor_path=path, policy="dynts", prompt=question, max_new_tokens=20,
                          device="cpu", out=io.StringIO())
    policy, eos = calls[-1]
    assert (stats["budget"], stats["window"], stats["ratio"]) == (len(ids) + 6, 4, 0.3)  # the file's defaults
    assert stats["evictions"] >= 2 and stats["peak_kv_tokens"] == len(ids) + 6
    assert (policy.end_think_id, policy.eot_id, eos) == (meta["end_think_id"], meta["eos_id"], meta["eos_id"])
    assert policy.prompt_len == len(ids) and policy.protect_prompt  # the whole chat prompt is protected

    out = io.StringIO()  # a prompt that starts with the bos token is used as it is
    whole = enc.decode(ids) + "Let me see"
    generate.main(hf=folder, prompt=whole, policy="window", budget=len(ids) + 8, window=2, max_new_tokens=3,
                  device="cpu", out=out)
    assert out.getvalue().startswith(whole)
    assert calls[-1][0].budget == len(ids) + 8


def test_hf_mistakes_are_one_line_naming_the_flag_or_file(tmp_path):
    llama = os.path.join(FIXTURES, "hf-llama")
    qwen_predictor = predictor_file(tmp_path / "qwen2.pt", "hf-qwen2", dict(budget=64, window=8, ratio=0.3))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    cases = [
        (["--hf", llama, "--ckpt", "x.pt", "--prompt", "hi"], "--hf and --ckpt"),
        (["--hf", llama, "--init", "random", "--prompt", "hi"], "--hf and --init random"),
        (["--hf", llama], "needs --prompt"),
        (["--hf", llama, "--problem", "3"], "needs --prompt"),
        (["--hf", llama, "--prompt", "hi", "--dynts"], "python -m lab.train --hf"),
        (["--hf", llama, "--prompt", "hi", "--policy", "dynts-bottom"], "needs --predictor FILE"),
        (["--hf", llama, "--prompt", "hi", "--policy", "h2o"], "needs --budget and --window"),
        (["--hf", llama, "--prompt", "hi", "--policy", "h2o", "--budget", "5", "--window", "1"], "--budget 5"),
        (["--hf", llama, "--prompt", "hi", "--dynts", "--predictor", qwen_predictor], "a predictor for another model"),
        (["--hf", llama, "--prompt", "hi", "--dynts", "--predictor", str(junk)], "junk.pt: not a predictor"),
        (["--hf", llama, "--prompt", "hi", "--dynts", "--predictor", str(tmp_path / "no.pt")], "no.pt: no such file"),
        (["--hf", str(tmp_path / "nowhere"), "--prompt", "hi"], "nowhere: not a folder"),
        (["--hf", str(tmp_path), "--prompt", "hi"], "config.json: no such file"),
        (["--predictor", qwen_predictor], "--predictor is for --hf"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            generate.cli(argv + ["--device", "cpu"])
        assert isinstance(e.value.code, str) and message in e.value.code and "\n" not in e.value.code, argv


def test_load_predictor_checks_the_model_it_was_trained_on(tmp_path):
    decoding = dict(budget=64, window=8, ratio=0.3)
    llama = hf.config_from_hf(os.path.join(FIXTURES, "hf-llama", "config.json"))
    with pytest.raises(UsageError, match=r"qwen2.pt: a predictor for another model \(.*hf-qwen2: norm_eps"):
        checkpoint.load_predictor(predictor_file(tmp_path / "qwen2.pt", "hf-qwen2", decoding), llama)
    predictor, meta = checkpoint.load_predictor(predictor_file(tmp_path / "llama.pt", "hf-llama", decoding), llama)
    assert meta["decoding"] == decoding and meta["label_scale"] == 1e4
    assert isinstance(predictor, dynts.ImportancePredictor)


@pytest.mark.parametrize("name", policies.NAMES)
def test_only_attention_based_policies_make_the_model_compute_attention(name, monkeypatch):
    import model as model_module
    asked = []  # need_attention, at every forward
    real = model_module.GPT.forward
    monkeypatch.setattr(model_module.GPT, "forward", lambda self, idx, cache=None, need_attention=False, mask=None:
                        asked.append(need_attention) or real(self, idx, cache, need_attention, mask))
    tokens, stats, _ = run(name, None if name == "full" else 48, 8, n=60)
    policy = policies.make_policy(name, 48, 8, 0.3, 12, dynts.ImportancePredictor(CFG.n_embd), ENC)
    by_attention = ("h2o", "h2o-last", "snapkv", "rkv", "h2o-native", "snapkv-native", "rkv-native", "rkv-native-cut",
                    "rkv-buffer")
    assert any(asked) == policy.needs_attention == (name.removesuffix("+p") in by_attention)
    assert stats["peak_kv_tokens"] <= (48 if name != "full" else 72)


def test_eval_hf_grades_final_answers_and_batches_prompts_by_length(tmp_path, monkeypatch):
    """eval.py --hf: questions of two prompt lengths, interleaved. Each batch holds prompts of one
    length, and a batch of two gives the records each prompt gets alone (every policy, DynTS
    evicting); the cache stays within the budget; the records come back in the problems' order,
    each graded by its own final answer, the last \\boxed{} after </think>."""
    from lab import eval as evaluate
    folder = os.path.join(FIXTURES, "hf-llama")
    _, enc, meta = hf.load_hf(folder)
    questions = ["What is 12 + 30?", "Six times seven, written as digits, is what number exactly?",
                 "What is 19 + 23?", "Seven times six, written as digits, is what number exactly?"]
    lengths = [len(hf.chat_prompt(q, enc, meta["bos"])) for q in questions]
    assert lengths[0] == lengths[2] != lengths[1] == lengths[3]  # two lengths, interleaved
    problems = tmp_path / "problems.jsonl"
    problems.write_text("\n".join(json.dumps(dict(question=q, answer="42")) for q in questions))
    path = predictor_file(tmp_path / "predictor.pt", "hf-llama", dict(budget=80, window=8, ratio=0.3))
    batches, replies = [], None  # each generate call's prompt lengths; canned answers by prompt
    real = evaluate.generate

    def spy(model, prompts, policy, steps, **kw):
        batches.append([len(p) for p in prompts])
        tokens, stats = real(model, prompts, policy, steps, **kw)
        if replies is not None:  # what the model "wrote": a canned answer per question
            rows = [enc.encode(replies[tuple(p)], allowed_special="all") + [meta["eos_id"]] for p in prompts]
            n = max(map(len, rows))
            tokens = torch.tensor([row + [meta["eos_id"]] * (n - len(row)) for row in rows])
        return tokens, stats

    monkeypatch.setattr(evaluate, "generate", spy)
    runs = {}
    for b in (1, 2):
        batches.clear()
        runs[b] = evaluate.main(hf_dir=folder, problems_path=str(problems), predictor_path=path, batch_size=b,
                                policies="full,dynts,h2o+p", max_new_tokens=60, device="cpu")
        assert all(len(set(batch)) == 1 for batch in batches)  # each batch of one prompt length
        groups = [[lengths[0]] * 2, [lengths[1]] * 2] if b == 2 else [[n] for n in lengths]  # per policy
        assert sorted(batches) == sorted(groups * 3)
    key = lambda r: (r["policy"], r["problem"], r["correct"], r["peak_kv"], round(r["mean_kv"], 6))
    assert list(map(key, runs[1]["records"])) == list(map(key, runs[2]["records"]))  # alone = batched, in order
    records = runs[2]["records"]
    assert len(records) == 12 and all(r["peak_kv"] <= 80 for r in records if r["policy"] != "full")
    assert max(r["peak_kv"] for r in records if r["policy"] == "full") > 80  # so DynTS did evict
    for name in ("full", "dynts", "h2o+p"):
        assert [r["problem"] for r in records if r["policy"] == name] == [0, 1, 2, 3]
    # Full's cache grows one slot a step from the prompt's P: peak P + n - 1, mean P + (n - 1) / 2,
    # so each record's 2 x mean - peak is its own problem's prompt length.
    assert [round(2 * r["mean_kv"] - r["peak_kv"]) for r in records if r["policy"] == "full"] == lengths

    # Grading, in the problems' order: batched [0, 2] and [1, 3], the records must still read 0, 1, 2, 3.
    ids = [tuple(hf.chat_prompt(q, enc, meta["bos"])) for q in questions]
    replies = dict(zip(ids, ["so 42</think>The answer is \\boxed{42}.", "\\boxed{41}</think>\\boxed{42}",
                             "\\boxed{42} but no end of thinking", "</think>\\boxed{41}"]))
    graded = evaluate.main(hf_dir=folder, problems_path=str(problems), predictor_path=path, batch_size=2,
                           policies="full,dynts", max_new_tokens=8, device="cpu")["records"]
    for name in ("full", "dynts"):
        assert [r["correct"] for r in graded if r["policy"] == name] == [True, True, False, False]
    grade = evaluate.hf_cases([dict(question="q", answer=" 42 ")], enc, meta)[0].grade
    assert grade("so \\boxed{41}, no: \\boxed{42}</think>The answer is \\boxed{42}.") == (True, 1.0)
    assert grade("\\boxed{42} but no end of thinking") == (False, 0.0)
    assert grade("</think>\\boxed{4{2}}") == (False, 0.0)


@pytest.mark.parametrize("config", [CFG, LLAMA_CFG], ids=["gpt2", "llama"])
@pytest.mark.parametrize("name", ["full", "dynts", "dynts-random", "window+p"])
def test_cuda_graphs_path_decodes_the_same_tokens(config, name):
    """generate(cuda_graphs=True): the fast path's step (fastpath.py, run eagerly on the CPU) and,
    where the policy allows, its graphed scoring, with in-place compaction, give the plain path's
    greedy tokens and evictions; policies that need attention weights are refused up front."""
    torch.manual_seed(0)
    model = GPT(config).eval()
    predictor = dynts.ImportancePredictor(config.n_embd).eval()
    prompt = torch.randint(0, 256, (3, 12))
    runs = []
    for graphs in (False, True):
        policy = policies.make_policy(name, 40, 8, 0.3, 12, predictor, ENC)
        evictions = []
        on_step = lambda cache, eviction: eviction is not None and evictions.append(cache.pos[:, :cache.length].clone())
        tokens, stats = generate.generate(model, prompt, policy, 100, vocab_limit=256, cuda_graphs=graphs,
                                          on_step=on_step)
        runs.append((tokens, evictions))
    assert torch.equal(runs[0][0], runs[1][0])
    assert len(runs[0][1]) == len(runs[1][1]) == (0 if name == "full" else len(runs[0][1])) and \
        all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert name == "full" or len(runs[0][1]) >= 3
    with pytest.raises(ValueError, match="scores by attention weights"):
        generate.generate(model, prompt, policies.make_policy("h2o", 40, 8, 0.3, 12), 5, cuda_graphs=True)


def test_ignore_eot_decodes_every_requested_token():
    """--ignore-eot (for throughput runs): the same sampled run that ends early at the end of text
    (seed 2: a random model writes it after a dozen tokens) decodes all --max-new-tokens with it."""
    runs = {}
    for ignore in (False, True):
        runs[ignore] = generate.main(init="random", preset="tiny", max_new_tokens=400, temperature=1.0, seed=2,
                                     ignore_eot=ignore, device="cpu", out=io.StringIO())
    assert runs[False]["new_tokens"] < 100 and runs[True]["new_tokens"] == 400


def test_a_trace_cut_off_before_its_end_is_called_so():
    """A sample stopped by --max-new-tokens is wrong for that reason, and the verdict says it."""
    import io
    out = io.StringIO()
    generate.main(policy="full", problem=0, max_new_tokens=20, device="cpu", out=out)
    assert "sample 0 is WRONG (cut off by --max-new-tokens 20 before its end)" in out.getvalue()
