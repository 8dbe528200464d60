"""dynts.py and lab/policies.py: select_keep's contract and the policies' invariants, as hypothesis
properties."""

import math

import pytest
torch = pytest.importorskip("torch")
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import dynts
from lab import policies
from model import GPTConfig, KVCache

INF, NAN = float("inf"), float("nan")
SCORE = st.one_of(st.floats(-3, 3, width=32), st.sampled_from([INF, -INF, NAN, 0.0, 1.0]))


def reference_keep(row: list[float], n_keep: int, window: int) -> list[int]:
    """The contract, spelled out: the last `window` slots, plus the older slots ranked by
    (score with NaN as -inf, slot index) from the top."""
    T = len(row)
    key = lambda j: (-INF if math.isnan(row[j]) else row[j], j)
    top = sorted(range(T - window), key=key, reverse=True)[:n_keep - window]
    return sorted(top) + list(range(T - window, T))


@st.composite
def selection_problem(draw):
    B = draw(st.integers(1, 4))
    T = draw(st.integers(1, 40))
    window = draw(st.integers(0, T))
    n_keep = draw(st.integers(window, T))
    scores = draw(st.lists(st.lists(SCORE, min_size=T, max_size=T), min_size=B, max_size=B))
    return torch.tensor(scores, dtype=torch.float32), n_keep, window


@settings(max_examples=300, deadline=None)
@given(selection_problem())
def test_select_keep_matches_the_contract(problem):
    scores, n_keep, window = problem
    B, T = scores.shape
    before = scores.clone()
    idx = dynts.select_keep(scores, n_keep, window)
    assert idx.dtype == torch.long and idx.shape == (B, n_keep)
    for b in range(B):
        row = idx[b].tolist()
        assert row == sorted(set(row))  # sorted and unique
        assert all(0 <= i < T for i in row)
        assert row[n_keep - window:] == list(range(T - window, T))  # the window kept
        assert row == reference_keep(scores[b].tolist(), n_keep, window)  # the top older ones
        older_inf = [j for j in range(T - window) if scores[b, j] == INF]
        if len(older_inf) <= n_keep - window:  # +inf always wins
            assert set(older_inf) <= set(row)
    assert torch.equal(idx, dynts.select_keep(scores.clone(), n_keep, window))  # deterministic
    torch.testing.assert_close(scores, before, rtol=0, atol=0, equal_nan=True)  # pure: the input is untouched


def test_select_keep_ties_go_to_the_later_slot_and_nan_is_minus_inf():
    scores = torch.tensor([[2.0, 1.0, 2.0, NAN, 2.0, -INF, 9.0]])
    assert dynts.select_keep(scores, 3, 1).tolist() == [[2, 4, 6]]
    assert dynts.select_keep(scores, 6, 1).tolist() == [[0, 1, 2, 4, 5, 6]]  # NaN ties -inf, later wins


@pytest.mark.parametrize("n_keep,window,T", [(3, 4, 10), (11, 2, 10), (3, -1, 10)])
def test_select_keep_rejects_broken_bounds(n_keep, window, T):
    with pytest.raises(ValueError, match="0 <= window <= n_keep <= T"):
        dynts.select_keep(torch.zeros(2, T), n_keep, window)


def test_select_keep_rejects_non_float_or_non_2d_scores():
    with pytest.raises(ValueError, match="float tensor"):
        dynts.select_keep(torch.zeros(2, 5, dtype=torch.long), 2, 1)
    with pytest.raises(ValueError, match="float tensor"):
        dynts.select_keep(torch.zeros(5), 2, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_select_keep_same_answer_on_cpu_and_gpu():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (8, 3000), generator=g).float()  # many ties
    scores[:, ::7] = NAN
    assert torch.equal(dynts.select_keep(scores, 1500, 500), dynts.select_keep(scores.cuda(), 1500, 500).cpu())


# -----------------------------------------------------------------------------
# Policies, simulated without a model: the "hidden state" is the score itself.


class ScoreIsHidden(torch.nn.Module):
    """Stands in for the predictor: the first feature of the hidden state is the score."""

    def forward(self, hidden):
        return hidden[..., 0]


END_THINK, EOT = 258, 256


@st.composite
def policy_run(draw):
    B = draw(st.integers(1, 3))
    window = draw(st.integers(0, 12))
    budget = draw(st.integers(window + 6, 60))
    ratio = draw(st.floats(0.05, 0.95))
    prompt_len = draw(st.integers(1, budget - window - 1))
    steps = draw(st.integers(1, 150))
    end_think = [draw(st.integers(prompt_len, prompt_len + steps + 5)) for _ in range(B)]  # position of </think>
    seed = draw(st.integers(0, 2**16))
    return B, budget, window, ratio, prompt_len, steps, end_think, seed


POLICY_NAMES = ["window", "streaming", "dynts", "h2o", "h2o-last", "snapkv", "rkv", "sepllm",
                "window+p", "streaming+p", "h2o+p", "snapkv+p", "rkv+p", "sepllm+p",
                "dynts-random", "dynts-bottom", "lexical", "dynts-noprompt", "random-all", "bottom-all", "noquestion"]
NATIVE_NAMES = ["h2o-native", "snapkv-native+p", "rkv-native", "rkv-native+p"]
ANSWER_PROTECTED = ("dynts", "dynts-random", "dynts-bottom", "lexical", "dynts-noprompt", "noquestion")
SEPARATORS = [ord(c) for c in policies.SepLLM.SEPARATORS]
LETTERS = [ord(c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
KV_CONFIG = GPTConfig(block_size=512, n_layer=2, n_head=2, n_kv_head=1, n_embd=8, mlp_hidden=8)


def build(name, budget, window, ratio, prompt_len):
    if name in NATIVE_NAMES:
        return policies.make_policy(name, budget, window, ratio, prompt_len)
    n_sink = min(4, budget - window - 1)
    p = dict(prompt_len=prompt_len, protect_prompt=name.endswith("+p"))
    simple = {"window": lambda: policies.Window(budget, window, ratio, **p),
              "streaming": lambda: policies.StreamingLLM(budget, window, ratio, n_sink=n_sink, **p),
              "h2o": lambda: policies.H2O(budget, window, ratio, **p),
              "h2o-last": lambda: policies.H2OLast(budget, window, ratio, **p),
              "snapkv": lambda: policies.SnapKV(budget, window, ratio, **p),
              "rkv": lambda: policies.RKV(budget, window, ratio, **p),
              "sepllm": lambda: policies.SepLLM(budget, window, ratio, separator_ids=SEPARATORS, n_sink=n_sink, **p)}
    if name.removesuffix("+p") in simple:
        return simple[name.removesuffix("+p")]()
    if name == "lexical":
        return policies.Lexical(budget, window, ratio, prompt_len, None, END_THINK, EOT, LETTERS, ord("="))
    kind = {"dynts": dynts.DynTS, "dynts-random": policies.RandomThinking, "dynts-bottom": policies.BottomK,
            "dynts-noprompt": policies.NoProtectedPrompt, "random-all": policies.RandomAll,
            "bottom-all": policies.BottomAll, "noquestion": policies.NoQuestion}[name]
    return kind(budget, window, ratio, prompt_len, ScoreIsHidden(), END_THINK, EOT)


def protected_positions(name, policy, prompt_len, seen):
    """The positions a policy never evicts: the prompt where protected, and the sinks."""
    prompt = set(range(prompt_len)) if name.endswith("+p") or name in ANSWER_PROTECTED[:4] else set()
    sinks = set(range(min(policy.n_sink, seen))) if name.removesuffix("+p") in ("streaming", "sepllm") else set()
    return prompt | sinks


def answer_positions(name, end_think_b, seen):
    """The positions after a row's `</think>`, which DynTS and its variants rank above thinking."""
    return set(range(end_think_b + 1, seen)) if name in ANSWER_PROTECTED else set()


@pytest.mark.parametrize("name", POLICY_NAMES)
@settings(max_examples=40, deadline=None)
@given(run=policy_run())
def test_policy_invariants_over_a_generation(name, run):
    """Drive a policy as generate.py does, with a real KVCache holding random keys (for R-KV)
    and random attention (for the attention-based policies), and check every eviction: the
    budget, the window, the protected tokens, sorted and unique, the count."""
    B, budget, window, ratio, prompt_len, steps, end_think, seed = run
    policy = build(name, budget, window, ratio, prompt_len)
    g = torch.Generator().manual_seed(seed)
    policy.reset(B, budget)
    cache = KVCache(KV_CONFIG, B, budget)
    evictions = 0
    for T in [prompt_len] + [1] * steps:
        positions = torch.arange(cache.seen, cache.seen + T)
        tokens = torch.randint(0, 250, (B, T), generator=g)
        tokens[torch.rand(B, T, generator=g) < 0.1] = ord(".")  # separators
        for b in range(B):  # each row's </think>
            tokens[b, (positions == end_think[b])] = END_THINK
        hidden = torch.randn(B, T, 2, generator=g)
        hidden[..., 0] = hidden[..., 0].round()  # ties
        hidden[..., 0][torch.rand(B, T, generator=g) < 0.05] = NAN
        cache.kv[:, :, :, :, cache.length:cache.length + T] = torch.randn(2, 2, B, 1, T, 4, generator=g)
        cache.advance(T)
        attn = torch.rand(1, B, 1, cache.length, generator=g) if policy.needs_attention else None  # (layers, B, heads, S)
        policy.observe(tokens, hidden, positions, attn)
        assert policy.length == cache.length <= budget
        if policy.should_evict(cache.length):
            L, pos = cache.length, cache.pos.clone()
            ranking = policy.ranking(cache)
            assert ranking.shape == (B, L)
            idx = policy.select(ranking)
            n = idx.shape[1]
            protected = protected_positions(name, policy, prompt_len, cache.seen)
            n_protected_older = len(protected & set(pos[0, :L - window].tolist()))  # the same in every row
            assert n == min(L - 1, window + max(n_protected_older, math.floor(ratio * (L - window))))
            for b in range(B):
                row = idx[b].tolist()
                assert row == sorted(set(row))
                assert row[-window:] == list(range(L - window, L)) if window else True
                kept = set(pos[b, idx[b]].tolist())
                assert protected & set(pos[b, :L].tolist()) <= kept
                answer = [p for p in pos[b, :L - window].tolist() if p in answer_positions(name, end_think[b], cache.seen)]
                kept_answer = [p for p in answer if p in kept]
                if len(kept_answer) < len(answer):  # an answer longer than its share: its newest tokens, and no thinking
                    assert kept_answer == answer[len(answer) - len(kept_answer):]
                    assert kept - set(pos[b, L - window:L].tolist()) <= protected | set(answer)
                if name == "window":  # only the newest
                    assert kept == set(pos[b, L - n:L].tolist())
            assert torch.equal(idx, policy.select(policy.ranking(cache)))  # deterministic
            kept_idx, evicted_ranking = policy.evict(cache)  # ranking -> select -> compaction
            assert torch.equal(kept_idx, idx)
            torch.testing.assert_close(evicted_ranking, ranking, rtol=0, atol=0, equal_nan=True)
            assert torch.equal(cache.pos[:, :n], pos.gather(1, idx))
            evictions += 1
            assert policy.length == n < budget
    assert evictions >= (prompt_len + steps - budget >= 0)  # the budget was hit: at least one eviction


@st.composite
def batch_run(draw):
    """Rows that end differently: some write `</think>` early and never stop (an answer longer
    than the older share), some finish and pad with end-of-text, some never leave thinking."""
    B = draw(st.integers(2, 3))
    window = draw(st.integers(0, 8))
    budget = draw(st.integers(window + 6, 40))
    ratio = draw(st.floats(0.05, 0.95))
    prompt_len = draw(st.integers(1, budget - window - 1))
    steps = draw(st.integers(budget, 120))
    N = prompt_len + steps
    ends = [(draw(st.integers(prompt_len, N + 5)), draw(st.integers(prompt_len, N + 40))) for _ in range(B)]
    return B, budget, window, ratio, prompt_len, steps, ends, draw(st.integers(0, 2**16))


def kept_slots(name, run, rows):
    """Drive policy `name` on `rows` of a batch_run together, as generate.py does; each row's
    tokens, hidden states and keys depend only on its row and position, and the attention each
    slot receives on its layer, row, step and slot. Returns the slots each row keeps at each
    eviction (for the native baselines, per layer and kv head): [eviction][row] -> list."""
    B, budget, window, ratio, prompt_len, steps, ends, seed = run
    g, N = torch.Generator().manual_seed(seed), prompt_len + steps
    tokens = torch.randint(0, 250, (B, N), generator=g)
    tokens[torch.rand(B, N, generator=g) < 0.1] = ord(".")  # separators
    for b, (end_think, end) in enumerate(ends):
        tokens[b, end_think:end_think + 1] = END_THINK
        tokens[b, end:] = EOT  # end-of-text, then padding
    hidden = torch.randn(B, N, 2, generator=g)
    hidden[..., 0] = hidden[..., 0].round()  # ties
    kv = torch.randn(2, 2, B, 1, N, 4, generator=g)  # (layers, k|v, B, Hkv, position, D)
    attention = torch.rand(2, B, N, budget, generator=g)  # (layer, row, the step's last position, slot)
    policy = build(name, budget, window, ratio, prompt_len)
    policy.reset(len(rows), budget)
    cache = KVCache(KV_CONFIG, len(rows), budget)
    kept = []
    for start, T in [(0, prompt_len)] + [(p, 1) for p in range(prompt_len, N)]:
        cache.kv[:, :, :, :, cache.length:cache.length + T] = kv[:, :, rows, :, start:start + T]
        cache.advance(T)
        attn = attention[:, rows, start + T - 1, None, :cache.length] if policy.needs_attention else None
        policy.observe(tokens[rows, start:start + T], hidden[rows, start:start + T], torch.arange(start, start + T), attn)
        if policy.should_evict(cache.length):
            idx, _ = policy.evict(cache)  # (rows, n), or (layers, rows, kv heads, n)
            kept.append([(idx[b] if idx.dim() == 2 else idx[:, b]).tolist() for b in range(len(rows))])
    return kept


@pytest.mark.parametrize("name", [n for n in POLICY_NAMES if n not in ("dynts-random", "random-all")] + NATIVE_NAMES)
@settings(max_examples=30, deadline=None)
@given(run=batch_run())
def test_a_row_keeps_the_same_tokens_in_any_batch(name, run):
    """What a row keeps depends on that row alone: decoded with others or by itself, it keeps
    the same positions at every eviction (one row's long answer or padding must not grow the
    others' caches). The random ablations are left out: their draws are shared by the batch."""
    together = kept_slots(name, run, list(range(run[0])))
    for b in range(run[0]):
        alone = kept_slots(name, run, [b])
        assert [k[b] for k in together] == [k[0] for k in alone]


def test_dynts_keeps_the_top_predicted_thinking_tokens():
    policy = dynts.DynTS(budget=10, window=2, ratio=0.5, predictor=ScoreIsHidden(), prompt_len=2,
                         end_think_id=END_THINK, eot_id=EOT)
    policy.reset(1, 10)
    scores = torch.tensor([0.0, 0.0, 5.0, 1.0, 7.0, 2.0, 6.0, 0.5, 3.0, 3.0])
    hidden = torch.stack([scores, torch.zeros(10)], dim=-1)[None]  # (1, 10, 2)
    policy.observe(torch.zeros(1, 10, dtype=torch.long), hidden, torch.arange(10))
    # older: 8 slots, 2 of them the protected prompt; floor(0.5 * 8) = 4 > 2: keep 4 + window 2
    assert policy.select(policy.ranking(None)).tolist() == [[0, 1, 4, 6, 8, 9]]


def test_dynts_ranks_the_answer_above_thinking_and_padding_after_end_of_text_last():
    policy = dynts.DynTS(budget=20, window=1, ratio=0.3, predictor=ScoreIsHidden(), prompt_len=1,
                         end_think_id=END_THINK, eot_id=EOT)
    policy.reset(1, 20)
    for i, tok in enumerate([1, 5, END_THINK, 7, EOT, 9]):
        policy.observe(torch.tensor([[tok]]), torch.zeros(1, 1, 2), torch.tensor([i]))
    assert policy.ranking(None)[0].tolist() == [INF, 0.0, 0.0, dynts.ANSWER, dynts.ANSWER, -INF]


def test_a_low_precision_score_still_ranks_the_answer_below_the_prompt():
    """A subclass whose predict returns bf16 (a bf16 model's own head): ANSWER, float32's
    largest, must not overflow to +inf, which would protect the answer like the prompt. (Also
    the README's advice: a DynTS subclass that overrides predict keeps the prompt's and the
    answer's ranks.)"""
    class HalfScores(dynts.DynTS):
        def predict(self, hidden):
            return hidden[..., 0].to(torch.bfloat16)

    policy = HalfScores(budget=20, window=1, ratio=0.3, predictor=None, prompt_len=1, end_think_id=END_THINK,
                        eot_id=EOT)
    policy.reset(1, 20)
    for i, tok in enumerate([1, 5, END_THINK, 7]):
        policy.observe(torch.tensor([[tok]]), torch.zeros(1, 1, 2), torch.tensor([i]))
    assert policy.ranking(None)[0].tolist() == [INF, 0.0, 0.0, dynts.ANSWER]


@pytest.mark.parametrize("kwargs,message", [
    (dict(budget=10, window=10), "--window"),
    (dict(budget=10, window=12), "--window"),
    (dict(budget=10, window=2, ratio=0.0), "--ratio"),
    (dict(budget=10, window=2, ratio=1.5), "--ratio"),
    (dict(budget=10, window=2, ratio=1.0), "nothing would be evicted"),
    (dict(budget=10, window=2, prompt_len=8), "protected prompt"),
])
def test_dynts_rejects_settings_that_cannot_work(kwargs, message):
    args = dict(ratio=0.3, predictor=ScoreIsHidden(), prompt_len=1, end_think_id=END_THINK, eot_id=EOT) | kwargs
    with pytest.raises(ValueError, match=message):
        dynts.DynTS(**args)


def test_an_answer_longer_than_its_share_loses_its_oldest_tokens_never_the_prompt():
    policy = dynts.DynTS(budget=8, window=1, ratio=0.5, predictor=ScoreIsHidden(), prompt_len=1,
                         end_think_id=END_THINK, eot_id=EOT)
    policy.reset(1, 8)
    for i, tok in enumerate([1, 2, END_THINK, 4, 5, 6, 7, 8]):  # the prompt, thinking, then an answer that never ends
        policy.observe(torch.tensor([[tok]]), torch.zeros(1, 1, 2), torch.tensor([i]))
    # older: 7 slots; floor(0.5 * 7) = 3: the prompt, then the two newest older answer tokens
    assert policy.select(policy.ranking(None)).tolist() == [[0, 5, 6, 7]]


def test_special_tokens_inside_the_prompt_end_nothing_in_the_ablations_either():
    """dynts-noprompt leaves the prompt unprotected, but an end-of-text typed into the prompt
    still does not turn the generated tokens into padding."""
    policy = policies.NoProtectedPrompt(budget=20, window=1, ratio=0.3, predictor=ScoreIsHidden(), prompt_len=3,
                                     end_think_id=END_THINK, eot_id=EOT)
    policy.reset(1, 20)
    policy.observe(torch.tensor([[EOT, 1, 2]]), torch.zeros(1, 3, 2), torch.arange(3))  # the prompt
    policy.observe(torch.tensor([[5]]), torch.ones(1, 1, 2), torch.tensor([3]))
    assert policy.ranking(None)[0].tolist() == [0.0, 0.0, 0.0, 1.0]  # scored, not protected, not padding


def test_special_tokens_inside_the_prompt_protect_nothing_and_end_nothing():
    """What is answer or padding depends only on what the model generated after the prompt."""
    policy = dynts.DynTS(budget=20, window=1, ratio=0.3, predictor=ScoreIsHidden(), prompt_len=3,
                         end_think_id=END_THINK, eot_id=EOT)
    policy.reset(1, 20)
    policy.observe(torch.tensor([[EOT, END_THINK, 1]]), torch.zeros(1, 3, 2), torch.arange(3))  # the prompt
    for i, tok in enumerate([5, 6], start=3):
        policy.observe(torch.tensor([[tok]]), torch.ones(1, 1, 2), torch.tensor([i]))
    assert policy.ranking(None)[0].tolist() == [INF, INF, INF, 1.0, 1.0]  # prompt protected; thinking scored


def test_predictor_has_the_papers_shape_and_is_non_negative():
    p = dynts.ImportancePredictor(64)
    sizes = [(m.in_features, m.out_features) for m in p.net if isinstance(m, torch.nn.Linear)]
    assert sizes == [(64, 128), (128, 32), (32, 1)]
    out = p(torch.randn(3, 7, 64) * 10)
    assert out.shape == (3, 7) and (out >= 0).all()


# -----------------------------------------------------------------------------
# What makes each baseline and ablation itself


def drive(policy, B, L, attn_steps=(), tokens=None, hidden=None, cache=None):
    """Observe a prefill of L tokens, then one decode step per attention row in attn_steps."""
    policy.reset(B, L + len(attn_steps))
    tokens = torch.zeros(B, L, dtype=torch.long) if tokens is None else tokens
    hidden = torch.zeros(B, L, 2) if hidden is None else hidden
    policy.observe(tokens, hidden, torch.arange(L), torch.zeros(1, B, 1, L) if policy.needs_attention else None)
    for i, a in enumerate(attn_steps):  # a (B, S): as the model gives it, (layers, B, kv heads, S)
        policy.observe(torch.zeros(B, 1, dtype=torch.long), torch.zeros(B, 1, 2), torch.tensor([L + i]), a[None, :, None])
    return policy.select(policy.ranking(cache))


def test_h2o_keeps_the_most_attention_accumulated_over_all_steps():
    # slot 1 gets a lot once, early; slot 2 a little, at every step: 2 wins over the sum
    steps = [torch.tensor([[0.0, 5.0 if i == 0 else 0.0, 1.0, 0.0, 0.0] + [0.0] * i + [1.0]]) for i in range(3)]
    steps += [torch.tensor([[0.0, 0.0, 2.0, 0.0, 0.0] + [0.0] * (i + 3) + [1.0]]) for i in range(2)]
    idx = drive(policies.H2O(budget=10, window=2, ratio=0.2), 1, 5, steps)  # floor(0.2 * 8) = 1 older slot
    assert idx.tolist() == [[2, 8, 9]]  # 2 accumulated 1+1+1+2+2 = 7 > slot 1's 5


def test_snapkv_counts_only_the_last_queries_before_the_eviction():
    policy = policies.SnapKV(budget=12, window=2, ratio=0.1, obs_window=2, kernel=1)
    early = [torch.tensor([[9.0, 0, 0, 0, 0] + [0.0] * i + [1.0]]) for i in range(5)]  # slot 0, long ago
    late = [torch.tensor([[0.0, 0, 0, 1.0, 0] + [0.0] * (i + 5) + [1.0]]) for i in range(2)]  # slot 3, just now
    idx = drive(policy, 1, 5, early + late)  # 12 slots; floor(0.1 * 10) = 1 older slot
    assert idx.tolist() == [[3, 10, 11]]


def test_rkv_evicts_the_redundant_key_among_equally_attended_ones():
    policy = policies.RKV(budget=6, window=1, ratio=0.25, obs_window=6, kernel=1, lam=0.5)
    cache = KVCache(KV_CONFIG, 1, 6)
    keys = torch.tensor([[1.0, 0, 0, 0], [1.0, 0.01, 0, 0], [1.0, 0, 0.01, 0], [0, 0, 0, 1.0], [0, 1.0, 0, 0], [0, 0, 1, 0]])
    cache.kv[:, 0, 0, 0, :6] = keys
    cache.length = 6
    # equal attention everywhere: only redundancy decides; slots 0-2 are near-copies of each other
    idx = drive(policy, 1, 6, [], cache=cache)
    assert idx.tolist() == [[3, 5]]  # floor(0.25 * 5) = 1 older slot: the one unlike the others


def test_sepllm_keeps_separators_before_newer_words():
    policy = policies.SepLLM(budget=12, window=2, ratio=0.3, separator_ids=SEPARATORS, n_sink=1)
    tokens = torch.tensor([[ord(c) for c in "ab. cd,efgh"]])  # 11 tokens; '.', ' ', ',' are separators
    idx = drive(policy, 1, 11, [], tokens=tokens)  # floor(0.3 * 9) = 2 older: sink 0, then the newest separator
    assert idx.tolist() == [[0, 6, 9, 10]]


def ablation(kind, scores, prompt_len=2):
    policy = kind(budget=10, window=2, ratio=0.5, predictor=ScoreIsHidden(), prompt_len=prompt_len,
                  end_think_id=END_THINK, eot_id=EOT)
    hidden = torch.stack([scores, torch.zeros(10)], dim=-1)[None]
    return drive(policy, 1, 10, [], hidden=hidden)


SCORES = torch.tensor([0.0, 0.0, 5.0, 1.0, 7.0, 2.0, 6.0, 0.5, 3.0, 3.0])


def test_bottom_k_keeps_the_least_important_thinking_tokens():
    assert ablation(dynts.DynTS, SCORES).tolist() == [[0, 1, 4, 6, 8, 9]]
    assert ablation(policies.BottomK, SCORES).tolist() == [[0, 1, 3, 7, 8, 9]]


def test_random_thinking_ignores_the_predictor_but_keeps_the_prompt():
    idx = ablation(policies.RandomThinking, SCORES)
    assert idx[0, :2].tolist() == [0, 1] and idx.shape == (1, 6)
    assert ablation(policies.RandomThinking, -SCORES).tolist() == idx.tolist()  # the predictor plays no part


def test_no_protected_prompt_lets_the_prompt_go():
    scores = SCORES.clone()
    scores[:2] = -1.0  # the prompt looks unimportant to the predictor
    assert 0 not in ablation(policies.NoProtectedPrompt, scores)[0].tolist()
    assert ablation(dynts.DynTS, scores)[0, :2].tolist() == [0, 1]


@settings(max_examples=30, deadline=None)
@given(st.integers(4, 40), st.integers(50, 120), st.integers(1, 40), st.floats(0.05, 0.6), st.integers(1, 5))
def test_streaming_with_the_prompt_protected_is_window_with_the_prompt_protected(prompt_len, budget, window, ratio,
                                                                                    evictions):
    """Why the README reports window+p and streaming+p as one row: StreamingLLM's sinks (the
    first 4 tokens) lie inside a protected prompt of at least 4 tokens, so both rank every
    other slot by position and keep the same slots at every eviction."""
    assume(prompt_len + window < budget and window + math.floor(ratio * (budget - window)) < budget)
    both = [policies.Window(budget, window, ratio, prompt_len=prompt_len, protect_prompt=True),
            policies.StreamingLLM(budget, window, ratio, prompt_len=prompt_len, protect_prompt=True)]
    for policy in both:
        policy.reset(2, budget)
    seen = 0
    for _ in range(evictions):
        n = budget - both[0].length  # fill the cache to its budget
        positions = torch.arange(seen, seen + n)
        for policy in both:
            policy.observe(torch.zeros(2, n, dtype=torch.long), None, positions)
        seen += n
        kept = [policy.select(policy.ranking(None)) for policy in both]
        assert torch.equal(kept[0], kept[1])
        for policy, idx in zip(both, kept):
            policy.keep_scores(idx)


def test_lexical_scores_the_two_tokens_after_a_letter_and_equals_however_the_text_arrives():
    """"so A=kl. B=ij" scores 1 at k, l, i, j and 0 elsewhere ("=k" after a lower-case letter
    does not count), whether the text comes as one prefill or a token at a time."""
    text = "x=ab so A=kl. B=ijA"
    tokens = torch.tensor([[ord(c) for c in text]])
    want = [float(i in (10, 11, 16, 17)) for i in range(len(text))]
    at_once = policies.Lexical(64, 4, 0.3, 0, None, END_THINK, EOT, LETTERS, ord("="))
    at_once.reset(1, 64)
    assert at_once.score(tokens, None, torch.arange(len(text))[None]).tolist() == [want]
    one_by_one = policies.Lexical(64, 4, 0.3, 0, None, END_THINK, EOT, LETTERS, ord("="))
    one_by_one.reset(1, 64)
    got = [one_by_one.score(tokens[:, i:i + 1], None, torch.tensor([[i]])).item() for i in range(len(text))]
    assert got == want
