"""lab/train.py and lab/eval.py: labels (dynts.importance_labels) against their definition, the
checkpoint, the whole pipeline on a miniature task."""

import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import asdict, replace

import pytest
torch = pytest.importorskip("torch")
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import dynts
from lab import checkpoint
from lab import eval as evaluate
import generate
from lab import task
from lab import train
from lab.cli import UsageError
from model import GPT, GPTConfig, KVCache, attention_with_probs, get_encoding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF_LLAMA = os.path.join(ROOT, "tests", "fixtures", "hf-llama")

SMALL = GPTConfig(block_size=512, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=64)
SMALL_TASK = dict(n_items=(2, 2), hops=2, n_distractors=2, n_filler=(0, 3), n_review=2)


@pytest.fixture
def small_setup(monkeypatch):
    monkeypatch.setattr(train, "CONFIGS", dict(llama=SMALL, gpt2=SMALL))
    monkeypatch.setattr(train, "TASK", SMALL_TASK)
    monkeypatch.setattr(train, "SHORT_TASK", dict(SMALL_TASK, n_filler=(0, 0)))


def labels_by_definition(model: GPT, tokens: torch.Tensor, think_end: int) -> torch.Tensor:
    """The paper's labels, computed the slow way: the full attention matrices of every layer
    and head over the whole sequence, then the mean over layers, heads and answer queries of
    A[l, h, i, j], diagonal zeroed, for every key j."""
    cfg = model.config
    T = tokens.shape[0]
    x = model.wte(tokens[None]) + model.wpe(torch.arange(T))
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    A = []
    for block in model.blocks:
        h = block.ln_1(x)
        q, k, v = block.attn.c_attn(h).split([cfg.n_embd, cfg.n_kv_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim], dim=2)
        q = q.view(1, T, cfg.n_head, cfg.head_dim).transpose(1, 2)
        k = k.view(1, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
        v = v.view(1, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
        y, probs = attention_with_probs(q, k, v, causal)  # probs (1, H, T, T)
        A.append(probs[0])
        x = x + block.attn.c_proj(y.transpose(1, 2).reshape(1, T, cfg.n_embd))
        x = x + block.mlp(block.ln_2(x))
    A = torch.stack(A)  # (L, H, T, T)
    A = A * (1 - torch.eye(T))  # no self-attention
    answer = torch.arange(think_end + 1, T)
    labels = A[:, :, answer, :].mean(dim=(0, 1, 2))  # (T,)
    labels[think_end + 1:] = 0.0
    return labels


def test_importance_labels_match_the_papers_definition():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    tokens = torch.randint(0, 256, (60,))
    tokens[50] = get_encoding().encode_single_token("</think>")
    with torch.no_grad():
        got, hidden = dynts.importance_labels(model, tokens, think_end=50, length=60)
        _, reference_hidden, _ = model(tokens[None])
        want = labels_by_definition(model, tokens, think_end=50)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert got[:51].sum() > 0 and (got[51:] == 0).all()
    torch.testing.assert_close(hidden, reference_hidden[0], rtol=1e-5, atol=1e-5)


def test_spearman():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert math.isclose(train.spearman(a, a * 10), 1.0, abs_tol=1e-6)
    assert math.isclose(train.spearman(a, -a), -1.0, abs_tol=1e-6)


def test_validation_checks_dynts_at_the_default_budget(small_setup, monkeypatch):
    torch.manual_seed(0)
    model, predictor = GPT(SMALL).eval(), dynts.ImportancePredictor(SMALL.n_embd)
    monkeypatch.setattr(train, "BUDGET_FRACTIONS", (0.2, 0.9, 1.0, 1.0))  # a default budget above the prompt
    d = train.budgets_on_validation(model, predictor, 4, "cpu")
    assert d["dynts_valid"].keys() == d["full_valid"].keys() and all(0 <= v <= 1 for v in d["dynts_valid"].values())
    # The same draws for every policy: DynTS with room for every token decodes exactly as Full.
    prompts = [get_encoding().encode(p.prompt, allowed_special="all") for p in task.problems("valid", 4, **SMALL_TASK)]
    roomy = dynts.DynTS(SMALL.block_size + 1, 200, 0.3, len(prompts[0]), predictor, 0, 1)
    full_rows, roomy_rows = (train.decode_for_validation(model, prompts, policy, "cpu") for policy in (dynts.Full(), roomy))
    assert roomy_rows == full_rows


def test_pipeline_trains_saves_loads_generates_and_evaluates(small_setup, tmp_path):
    path = str(tmp_path / "ckpt.pt")
    metrics = train.main(out=path, device="cpu", steps=3, batch_size=2, predictor_traces=2, predictor_steps=2,
                         eval_traces=2)
    assert -1 <= metrics["spearman"] <= 1 and 0 <= metrics["decisive_recall_top10"] <= 1
    model, predictor, meta = checkpoint.load_checkpoint(path)
    assert model.config == SMALL and meta["task"] == SMALL_TASK and meta["encoding"] == "bytes-think"
    d = meta["decoding"]  # chosen on validation problems: fractions of Full's mean peak cache there
    assert d["budgets"] == [round(f * d["full_peak_valid"]) for f in train.BUDGET_FRACTIONS]
    assert d["budget"] == d["budgets"][1] and d["window"] == round(0.4 * d["budget"]) and d["ratio"] == 0.3
    assert d["n_valid"] == 4 and d["full_peak_valid"] <= SMALL.block_size
    assert d["full_valid"].keys() <= set(task.FAMILIES) and all(0 <= v <= 1 for v in d["full_valid"].values())
    assert d["dynts_valid"] is None  # this 3-step model stops early: its default budget is below the prompt
    ckpt = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in ckpt["model"].values())

    with pytest.raises(UsageError, match="exists: pass --force"):
        train.main(out=path, device="cpu")

    stats = generate.main(policy="dynts", budget=300, ckpt=path, device="cpu", max_new_tokens=60,
                          out=open(tmp_path / "o", "w"))
    assert "expected_answer" in stats and stats["correct"] in (0.0, 1.0)

    result = evaluate.main(ckpt=path, n=1, policies="full,window,dynts", budgets="200,260", device="cpu",
                           batch_size=5, ranking_traces=2, json_path=str(tmp_path / "e.json"))
    rows = result["rows"]
    assert [(r["policy"], r["level"]) for r in rows] == [("full", None), ("dynts", 200), ("window", 200),
                                                         ("dynts", 260), ("window", 260)]
    for r in rows:
        assert 0 <= r["pass_at_1"] <= 1 and r["n"] == 5 and set(r["families"]) == set(task.SHORT_TRACE_FAMILIES)
        assert r["ci"][0] <= r["pass_at_1"] <= r["ci"][1]
        if r["level"]:
            assert r["peak_kv"] <= r["level"]
    assert len(result["records"]) == 5 * 5 and {r["problem"] for r in result["records"]} == set(range(5))
    merged = evaluate.main(merge=[str(tmp_path / "e.json")] * 2)  # a second run of the same seed: pairs collapse
    assert [r["n"] for r in merged["rows"]] == [10] * 5
    assert [(t["rival"], t["n_pairs"]) for t in merged["paired_tests"]] == [("window", 5), ("full", 5)] * 2
    only = evaluate.main(merge=[str(tmp_path / "e.json")], policies="full,window")  # --policies keeps theirs
    assert [(r["policy"], r["level"]) for r in only["rows"]] == [("full", None), ("window", 200), ("window", 260)]
    with pytest.raises(UsageError, match="no records of 'h2o'"):
        evaluate.main(merge=[str(tmp_path / "e.json")], policies="full,h2o")
    with pytest.raises(UsageError, match="--n is for decoding"):  # not silently ignored
        evaluate.main(merge=[str(tmp_path / "e.json")], n=3)


def corrupt_checkpoints(tmp_path, good: str):
    raw = open(good, "rb").read()
    (tmp_path / "truncated.pt").write_bytes(raw[:len(raw) // 2])
    (tmp_path / "text.pt").write_text("not a checkpoint")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    other = torch.load(good, weights_only=True)
    other["config"]["n_embd"] = 64
    torch.save(other, tmp_path / "other-config.pt")
    torch.save({}, tmp_path / "empty.pt")
    for name, change in [("no-decoding.pt", lambda c: c.pop("decoding")),
                         ("bad-budget.pt", lambda c: c["decoding"].update(budget="lots")),
                         ("bad-task.pt", lambda c: c.update(task=[1, 2])),
                         ("nan-weights.pt", lambda c: c["model"]["wte.weight"].fill_(float("nan")))]:
        c = torch.load(good, weights_only=True)
        change(c)
        torch.save(c, tmp_path / name)
    return ["truncated.pt", "text.pt", "list.pt", "other-config.pt", "empty.pt", "no-decoding.pt", "bad-budget.pt",
            "bad-task.pt", "nan-weights.pt"]


def test_bad_checkpoints_get_one_line_naming_the_file(small_setup, tmp_path):
    good = str(tmp_path / "good.pt")
    train.main(out=good, device="cpu", steps=1, batch_size=1, predictor_traces=1, predictor_steps=1, eval_traces=1)
    for name in corrupt_checkpoints(tmp_path, good) + ["missing.pt"]:
        with pytest.raises(SystemExit) as e:
            generate.cli(["--dynts", "--ckpt", str(tmp_path / name), "--device", "cpu"])
        assert name in e.value.code and "\n" not in e.value.code, e.value.code
        with pytest.raises(SystemExit) as e:
            evaluate.cli(["--ckpt", str(tmp_path / name), "--device", "cpu"])
        assert name in e.value.code and "\n" not in e.value.code, e.value.code


@pytest.mark.parametrize("argv,message", [
    (["--n", "0"], "--n"), (["--policies", "full,bogus"], "--policies"), (["--batch-size", "0"], "--batch-size"),
    (["--budget", "0"], "--budget"), (["--ratio", "0"], "--ratio"), (["--budgets", "600,x"], "--budgets"),
    (["--budgets", ""], "--budgets is empty"), (["--n", "100000000"], "--n"), (["--seed", str(2**70)], "--seed"),
    (["--ranking-traces", "-1"], "--ranking-traces"), (["--json", "/no/such/folder/x.json"], "--json"),
    (["--budget", "900", "--budgets", "600,700"], "give one of"), (["--budgets", "600", "--fractions", "0.3"], "give one of"),
    # a real model (--hf): what it needs, and the flags of the other pipeline
    (["--cuda-graphs"], "--cuda-graphs needs a CUDA device"),
    (["--hf", HF_LLAMA], "needs --problems"), (["--problems", "p.jsonl"], "--problems is for --hf"),
    (["--predictor", "p.pt"], "--predictor is for --hf"), (["--hf", HF_LLAMA, "--n", "3"], "--n is for the tiny"),
    (["--hf", HF_LLAMA, "--problems", "p.jsonl", "--policies", "oracle"], "oracle needs the model's own"),
    (["--hf", HF_LLAMA, "--problems", "p.jsonl", "--policies", "dynts"], "needs --predictor FILE"),
    (["--hf", HF_LLAMA, "--problems", "/no/such.jsonl", "--policies", "full"], "/no/such.jsonl: no such file")])
def test_eval_bad_flags(argv, message):
    with pytest.raises(SystemExit) as e:
        evaluate.cli(argv + ["--device", "cpu"])
    assert message in e.value.code and "\n" not in e.value.code


def test_blind_eviction_masks_are_causal_and_know_nothing_of_the_task():
    """Each row: causal, every token sees itself and its recent window; holes elsewhere. The
    same tokens give the same mask, whatever the problems' answers (the problems are not read)."""
    from lab import task
    problems = task.problems("train", 8, **SMALL_TASK)
    enc = get_encoding()
    tokens, prompt_len, _, _ = train.encode_batch(problems, enc, "cpu")
    T = tokens.shape[1]
    mask = train.blind_eviction_mask(problems, tokens, prompt_len, torch.Generator().manual_seed(0))
    assert mask.shape == (8, T, T)
    assert not (mask & ~torch.ones(T, T, dtype=torch.bool).tril()).any()  # never the future
    i = torch.arange(T)
    assert mask[:, i, i].all()  # every token sees itself
    assert mask[:, i[1:], i[:-1]].all()  # and the one before it (every window is >= 64... or the budget's)
    others = [task.problems("train", 8, seed=99, **SMALL_TASK)[0]] * 8  # other problems, same tokens
    again = train.blind_eviction_mask(others, tokens, prompt_len, torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)


def test_blind_replay_is_the_policy_rule_with_scripted_scores():
    """The replay kind equals a token-at-a-time decode of a policy that ranks by the same scores."""
    T, P = 300, 20
    scores = torch.rand(T, generator=torch.Generator().manual_seed(1))
    scores[:P] = float("inf")
    make = lambda: train.ScriptedScores(100, 30, 0.3, scores)
    tokens = torch.zeros(T, dtype=torch.long)
    expected = replayed_one_token_at_a_time(make(), tokens, torch.zeros(T, 1), P)
    assert torch.equal(train.visibility(train.eviction_deaths(make(), tokens, None)[None])[0], expected)
    assert expected[-1, :P].all()  # the protected prompt, still seen at the end


@pytest.mark.parametrize("argv,message", [
    (["--lr", "nan"], "--lr"), (["--lr", "0"], "--lr"), (["--predictor-lr", "inf"], "--predictor-lr"),
    (["--finetune-lr", "-1"], "--finetune-lr"), (["--seed", str(2**70)], "--seed"),
    (["--max-minutes", "0"], "--max-minutes"), (["--max-minutes", "5", "--base", "x.pt"], "--max-minutes"),
    (["--steps", "9", "--base", "x.pt"], "--steps is the base model's"), (["--lr", "1e-3", "--base", "x.pt"], "--lr is"),
    (["--finetune-lr", "1e-4"], "it needs --finetune-steps"), (["--batch-size", "8", "--base", "x.pt"], "--batch-size")])
def test_train_bad_numbers_fail_before_training(argv, message, tmp_path):
    with pytest.raises(SystemExit) as e:
        train.cli(argv + ["--out", str(tmp_path / "x.pt"), "--device", "cpu"])
    assert message in e.value.code and "\n" not in e.value.code
    assert not (tmp_path / "x.pt").exists()


def test_a_diverging_loss_stops_training_without_a_checkpoint(small_setup, tmp_path):
    path = tmp_path / "x.pt"
    with pytest.raises(UsageError, match="the loss became nan"):
        train.main(out=str(path), device="cpu", steps=2, batch_size=2, lr=1e30, predictor_traces=1,
                   predictor_steps=1, eval_traces=1)
    assert not path.exists()


def test_base_flag_trains_only_the_predictor(small_setup, tmp_path):
    first, second = str(tmp_path / "a.pt"), str(tmp_path / "b.pt")
    train.main(out=first, device="cpu", steps=1, batch_size=1, predictor_traces=1, predictor_steps=1, eval_traces=1)
    train.main(out=second, base=first, device="cpu", predictor_traces=2, predictor_steps=3, eval_traces=1)
    a, b = torch.load(first, weights_only=True), torch.load(second, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # the base model is kept
    assert not all(torch.equal(a["predictor"][k], b["predictor"][k]) for k in a["predictor"])
    assert b["metrics"]["predictor_traces"] == 2


def replayed_one_token_at_a_time(policy, tokens, hidden, prompt_len):
    """The slow reference for dynts_eviction_mask: the prompt as one chunk, then one token per
    step, as generate.py decodes; after each write, the live slots' positions are what the
    query sees; then the eviction, if one is due."""
    T = tokens.shape[0]
    policy.reset(1, policy.budget)
    visible, live = torch.zeros(T, T, dtype=torch.bool), []
    chunks = [range(0, prompt_len)] + [range(i, i + 1) for i in range(prompt_len, T)]
    for c in chunks:
        policy.observe(tokens[None, c.start:c.stop], hidden[None, c.start:c.stop], torch.arange(c.start, c.stop))
        live += list(c)
        for i in c:
            visible[i, [j for j in live if j <= i]] = True
        if policy.should_evict(policy.length):
            idx = policy.select(policy.ranking(None))
            policy.keep_scores(idx)
            live = [live[j] for j in idx[0].tolist()]
    return visible


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_dynts_eviction_mask_replays_decoding(data):
    """The segment-at-a-time mask equals the token-at-a-time replay, for random settings and
    scores, with </think> and end-of-text inside the trace or not."""
    import dynts
    enc = get_encoding()
    end_think, eot = enc.encode_single_token("</think>"), enc.eot_token
    P, T = data.draw(st.integers(1, 12)), data.draw(st.integers(20, 90))
    budget = data.draw(st.integers(P + 2, 40))
    window = data.draw(st.integers(0, budget - P - 1))
    ratio = data.draw(st.floats(0.05, 0.95))
    assume(window + math.floor(ratio * (budget - window)) < budget)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2 ** 16)))
    tokens = torch.randint(0, 256, (T,), generator=gen)
    for special in (end_think, eot):
        if data.draw(st.booleans()):
            tokens[data.draw(st.integers(P, T - 1))] = special
    hidden = torch.randn(T, 8, generator=gen)
    predictor = dynts.ImportancePredictor(8)
    make = lambda: dynts.DynTS(budget, window, ratio, P, predictor, end_think, eot)
    with torch.no_grad():
        expected = replayed_one_token_at_a_time(make(), tokens, hidden, P)
    assert torch.equal(train.dynts_eviction_mask(make(), tokens, hidden), expected)


def test_finetune_stage_changes_the_base_model_and_retrains_the_predictor(small_setup, tmp_path):
    first, second = str(tmp_path / "a.pt"), str(tmp_path / "b.pt")
    train.main(out=first, device="cpu", steps=1, batch_size=2, predictor_traces=1, predictor_steps=1, eval_traces=1)
    train.main(out=second, base=first, device="cpu", batch_size=2, predictor_traces=1, predictor_steps=1,
               eval_traces=1, finetune_steps=2)
    a, b = torch.load(first, weights_only=True), torch.load(second, weights_only=True)
    assert not all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["metrics"]["finetune_steps"] == 2 and "finetune_steps" not in a["metrics"]


def test_train_model_gives_the_odd_rows_the_eviction_mask(small_setup):
    """The odd rows attend through eviction_mask's holes, the even rows causally."""
    calls, seen = [], []
    model = GPT(SMALL)
    forward = model.forward

    def holes(problems, tokens, prompt_len, generator, device=None):  # every key but the query itself hidden
        calls.append((len(problems), tuple(tokens.shape), prompt_len.tolist()))
        return torch.eye(tokens.shape[1], dtype=torch.bool).repeat(len(problems), 1, 1)

    def spy(idx, cache=None, need_attention=False, mask=None):
        seen.append(mask)
        return forward(idx, cache, need_attention, mask)

    model.forward = spy
    train.train_model(model, steps=1, batch_size=3, lr=1e-3, device=torch.device("cpu"), seed=0, eviction_mask=holes)
    (b, shape, prompt_len), (causal_rows, holed_rows) = calls[0], seen
    T = holed_rows.shape[1]
    assert len(calls) == 1 and b == 1 and shape == (1, T) and len(prompt_len) == 1
    assert causal_rows is None  # rows 0 and 2: plain causal attention (a fused kernel), in one forward
    assert holed_rows.shape == (1, T, T) and torch.equal(holed_rows[0], torch.eye(T, dtype=torch.bool))


def test_the_oracle_ranks_by_the_attention_each_rows_own_answer_pays():
    """AnswerOracle's scores, for a batch whose answers differ in length, equal a row-at-a-time
    reference: that row's live tokens prefilled into a fresh cache, then its answer, asking
    the model for the attention each slot received. Protected and padding slots keep DynTS's
    +inf / -inf."""
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    enc = get_encoding()
    B, L, P = 4, 40, 5
    tokens = torch.randint(0, 256, (B, L))
    answers = [[258, 65, 61, 97], [258, 66, 61, 98, 62, 99], [258, 67], [258, 68, 61, 100]]  # 3 lengths
    oracle = evaluate.AnswerOracle(60, 8, 0.3, model, answers, P, 258, enc.eot_token)
    oracle.reset(B, 60)
    cache = KVCache(SMALL, B, 60)
    with torch.no_grad():
        _, hidden, _ = model(tokens, cache)
        oracle.observe(tokens, hidden, torch.arange(L))
        got = oracle.ranking(cache)
        for b in range(B):
            fresh = KVCache(SMALL, 1, L + len(answers[b]))
            model(tokens[b:b + 1], fresh)
            _, _, received = model(torch.tensor([answers[b]]), fresh, need_attention=True)
            want = received.mean(dim=(0, 2))[0, :L].clone()
            want[:P] = float("inf")
            torch.testing.assert_close(got[b], want, rtol=1e-5, atol=1e-7)


def test_the_checkpoint_error_survives_an_exception_with_no_message(monkeypatch):
    def broken(config):
        raise RuntimeError()

    monkeypatch.setattr(checkpoint, "GPT", broken)
    with pytest.raises(UsageError, match=r"not a checkpoint of this project \(RuntimeError\)$"):
        checkpoint.load_checkpoint(checkpoint.DEFAULT_CKPT)


# -----------------------------------------------------------------------------
# train.py --hf: the paper's pipeline on a real model's folder (here the tiny Llama fixture)

HF_LLAMA = os.path.join(os.path.dirname(__file__), "fixtures", "hf-llama")


def test_final_answer_reads_the_last_boxed_answer():
    assert train.final_answer("so \\boxed{3} hmm, no: \\boxed{\\frac{1}{2}} ") == "\\frac{1}{2}"
    assert train.final_answer("  42 \n") == "42"
    assert train.final_answer("\\boxed{7") == "7"


def test_hf_pipeline_labels_correct_traces_trains_resumes_and_writes_a_predictor(tmp_path, monkeypatch):
    """A random tiny model never closes its thinking, so sample_trace is scripted: problem 0's
    trace is right, problem 1's wrong. The labels, the predictor, the checkpoint and the resume
    are the real code on the real loader's model."""
    pytest.importorskip("safetensors")
    import generate
    from lab import hf
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"question": "1+1?", "answer": "2"}\n\n{"question": "2+2?", "answer": "4"}\n')
    calls = []

    def scripted(model, enc, meta, question, max_new_tokens, temperature, generator):
        calls.append(question)
        prompt = hf.chat_prompt(question, enc, meta["bos"])
        thinking = enc.encode_ordinary("let me add the two numbers, carefully.")
        answer = enc.encode_ordinary("\\boxed{2}")
        ids = prompt + thinking + [meta["end_think_id"]] + answer + [meta["eos_id"]]
        return ids, len(prompt), len(prompt) + len(thinking)

    monkeypatch.setattr(train, "sample_trace", scripted)
    out = str(tmp_path / "pred.pt")
    argv = ["--hf", HF_LLAMA, "--problems", str(problems), "--out", out, "--budget", "64", "--window", "16",
            "--predictor-steps", "5", "--device", "cpu"]
    train.main(**vars(train.parse_args(argv)))
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["kind"] == "dynts-predictor" and ckpt["decoding"] == dict(budget=64, window=16, ratio=0.3)
    assert ckpt["metrics"]["traces"] == 2 and ckpt["metrics"]["correct"] == 1
    model, enc, meta = hf.load_hf(HF_LLAMA)
    assert ckpt["config"] == asdict(model.config)
    saved = torch.load(out + ".traces/0-0.pt", weights_only=True)
    n_thinking = len(enc.encode_ordinary("let me add the two numbers, carefully.")) + 1  # and </think>
    assert saved["correct"] and saved["hidden"].shape == (n_thinking, model.config.n_embd)
    # Mean attention of the answer's queries: a part of one probability distribution per query.
    assert (saved["labels"] >= 0).all() and 0 < saved["labels"].sum() <= 1 + 1e-5
    assert not torch.load(out + ".traces/1-0.pt", weights_only=True)["correct"]
    # Resumed: nothing sampled again, the same predictor data.
    calls.clear()
    train.main(**vars(train.parse_args(argv + ["--force"])))
    assert calls == []
    with pytest.raises(UsageError, match="sampled with other settings \\(samples\\)"):  # before loading anything
        train.main(**vars(train.parse_args(argv + ["--force", "--samples", "2"])))
    predictor = dynts.ImportancePredictor(model.config.n_embd)
    predictor.load_state_dict(ckpt["predictor"])


@pytest.mark.parametrize("argv, message", [
    (["--hf", HF_LLAMA, "--steps", "3"], "--steps is for the tiny reasoner"),
    (["--problems", "x.jsonl"], "--problems is for --hf DIR"),
    (["--hf", HF_LLAMA, "--budget", "64", "--window", "16"], "--hf needs --problems"),
])
def test_hf_flags_of_the_other_pipeline_are_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        train.main(**vars(train.parse_args(argv)))


def test_eval_run_policy_with_cuda_graphs_gives_the_same_records(monkeypatch):
    """eval.run_policy(cuda_graphs=True): the fast path (eager on the CPU) where the policy allows
    it, the plain path for the attention-scored ones; the records are the plain path's."""
    from lab import fastpath
    steps = []  # which policies the fast path ran
    monkeypatch.setattr(fastpath.GraphedDecode, "_step", lambda self, real=fastpath.GraphedDecode._step:
                        steps.append(1) or real(self))
    torch.manual_seed(0)
    model, predictor = GPT(SMALL).eval(), dynts.ImportancePredictor(SMALL.n_embd).eval()
    enc = get_encoding()
    cases = evaluate.task_cases([p for f in task.FAMILIES[:2] for p in task.problems("eval", 2, family=f, **SMALL_TASK)],
                                enc)
    P = len(cases[0].prompt)
    for name in ["dynts", "window+p", "h2o+p", "oracle"]:
        runs = [evaluate.run_policy(name, model, predictor, cases, P + 24, 8, 0.3, 4, enc, max_new_tokens=40,
                                    cuda_graphs=graphs) for graphs in (False, True)]
        drop = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
        assert drop(runs[0]) == drop(runs[1]) and max(r["peak_kv"] for r in runs[0]) == P + 24
        assert (len(steps) > 0) == (name != "h2o+p"), name  # H2O scores by attention: no fast path
        steps.clear()


def test_train_model_stopped_and_resumed_ends_where_one_run_ends(tmp_path):
    """--max-minutes: a run stopped after 3 of 6 steps and continued from its state file ends with
    the same weights, bit for bit, as one run of 6 steps (on the CPU); other settings are refused."""
    kw = dict(steps=6, batch_size=2, lr=1e-3, device=torch.device("cpu"), seed=0, curriculum=1.0)
    cfg = replace(SMALL, block_size=2048)  # the short traces
    torch.manual_seed(0)
    whole = GPT(cfg)
    assert train.train_model(whole, **kw)
    path, settings = str(tmp_path / "ck.pt.state"), dict(seed=0, steps=6)
    torch.manual_seed(0)
    part = GPT(cfg)
    assert not train.train_model(part, state_path=path, settings=settings, should_stop=lambda step: step == 3, **kw)
    torch.manual_seed(1)
    resumed = GPT(cfg)  # other initial weights: the state replaces them
    assert train.train_model(resumed, state_path=path, settings=settings, **kw)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(UsageError, match=r"other settings \(steps\)"):
        train.train_model(GPT(cfg), state_path=path, settings=dict(seed=0, steps=7), **kw)
    open(path, "wb").write(b"not a state")  # a truncated file: one line, not a traceback
    with pytest.raises(UsageError, match="not a state train.py can continue from"):
        train.train_model(GPT(cfg), state_path=path, settings=settings, **kw)
    torch.save(dict(model=whole.state_dict()), path)  # loads, but holds no run's state (a checkpoint, say)
    with pytest.raises(UsageError, match=r"not a state train.py can continue from \(KeyError\)"):
        train.train_model(GPT(cfg), state_path=path, settings=settings, **kw)


# -----------------------------------------------------------------------------
# Ctrl-C keeps what a long run finished


ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")  # tiny models: a second thread only waits, slowly on a busy CPU


def interrupt(module: str, argv: list[str], when: str):
    """Run `python -m module argv` and send it SIGINT (Ctrl-C) once a line of its stdout holds
    `when`: (exit status, stdout, stderr)."""
    p = subprocess.Popen([sys.executable, "-m", module, *argv], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
    seen = []
    for line in p.stdout:
        seen.append(line)
        if when in line:
            p.send_signal(signal.SIGINT)
            break
    out, err = p.communicate(timeout=120)
    return p.returncode, "".join(seen) + out, err


def test_ctrl_c_keeps_the_base_models_state_and_the_same_command_continues(tmp_path):
    """SIGINT in the base model's steps: the step running ends, its state is kept in OUT.state,
    one line says so, exit 130; the same command resumes past it (and can be stopped again)."""
    out = str(tmp_path / "ck.pt")
    argv = ["--steps", "400", "--batch-size", "2", "--out", out, "--device", "cpu"]
    first = None
    for when in ["base model:", "resuming at step"]:
        code, stdout, stderr = interrupt("lab.train", argv, when)
        step = torch.load(out + ".state", weights_only=True)["step"]
        assert code == 130 and stderr.strip() == f"python -m lab.train: interrupted: {out}.state keeps the base " \
            f"model's state after step {step}: the same command continues from it", stderr
        if first is None:
            first = step
        else:
            assert f"model: resuming at step {first} of 400" in stdout and step > first >= 1
    assert not os.path.exists(out)


def test_ctrl_c_in_eval_keeps_the_policies_decoded_and_merge_pools_the_rest(small_setup, tmp_path):
    """SIGINT once a policy's row is out: its records are kept where --json writes, one line says
    how to decode the rest and --merge them, exit 130; doing so gives every policy, each problem once."""
    enc = get_encoding()
    prompts = [enc.encode(p.prompt, allowed_special="all") for f in task.SHORT_TRACE_FAMILIES
               for p in task.problems("eval", 1, family=f, **SMALL_TASK)]
    budget = max(map(len, prompts)) + 60
    ckpt, part, rest = (str(tmp_path / name) for name in ("small.pt", "part.json", "rest.json"))
    torch.manual_seed(0)
    model = GPT(SMALL)  # random weights: decodes to the block size, fast
    train.save_checkpoint(ckpt, model, dynts.ImportancePredictor(SMALL.n_embd), dict(seed=0),
                          dict(budget=budget, window=20, ratio=0.3))
    argv = ["--ckpt", ckpt, "--n", "1", "--batch-size", "5", "--ranking-traces", "0", "--device", "cpu"]
    code, stdout, stderr = interrupt("lab.eval", argv + ["--policies", "full,window,h2o", "--json", part], "full ")
    assert code == 130 and stderr.strip() == (
        f"python -m lab.eval: interrupted: the records of full are in {part}; decode the rest by running it again "
        f"with --policies window,h2o --json REST.json, then pool both with --merge {part} REST.json"), stderr
    assert {r["policy"] for r in json.load(open(part))["records"]} == {"full"}
    subprocess.run([sys.executable, "-m", "lab.eval", *argv, "--policies", "window,h2o", "--json", rest], cwd=ROOT,
                   check=True, capture_output=True, env=ONE_THREAD)
    merged = evaluate.main(merge=[part, rest])
    seen = [(r["policy"], r["problem"]) for r in merged["records"]]
    assert sorted(seen) == sorted((p, i) for p in ["full", "window", "h2o"] for i in range(5))


def test_eval_notes_a_ratio_that_some_policies_do_not_use(tmp_path, capsys):
    """--ratio with a set of policies: the note names those whose own schedule ignores it (the
    missing checkpoint then stops the run, after the note)."""
    with pytest.raises(UsageError):
        evaluate.main(ckpt=str(tmp_path / "nope.pt"), policies="full,dynts,h2o-native,rkv-native-cut+p,rkv-buffer",
                      ratio=0.5, device="cpu")
    err = capsys.readouterr().err
    assert "note: --ratio 0.5 does not change h2o-native, rkv-buffer (their own schedules decide)" in err
