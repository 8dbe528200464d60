"""dynts.py: select_keep's contract and the policies' invariants, as hypothesis properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dynts

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
    assert torch.equal(scores.isnan(), problem[0].isnan())  # pure: the input is untouched


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


POLICY_NAMES = ["window", "streaming", "dynts"]


def build(name, budget, window, ratio, prompt_len):
    if name == "window":
        return dynts.Window(budget, window, ratio)
    if name == "streaming":
        return dynts.StreamingLLM(budget, window, ratio, n_sink=min(4, budget - window - 1))
    return dynts.DynTS(budget, window, ratio, ScoreIsHidden(), prompt_len, END_THINK, EOT)


def protected_positions(name, policy, prompt_len, end_think_b, seen):
    if name == "streaming":
        return set(range(min(policy.n_sink, seen)))
    if name == "dynts":
        return set(range(prompt_len)) | set(range(end_think_b + 1, seen))
    return set()


@pytest.mark.parametrize("name", POLICY_NAMES)
@settings(max_examples=60, deadline=None)
@given(run=policy_run())
def test_policy_invariants_over_a_generation(name, run):
    """Drive a policy as generate.py does, mirroring the cache's positions, and check every
    eviction: the budget, the window, the protected tokens, sorted and unique, the count."""
    B, budget, window, ratio, prompt_len, steps, end_think, seed = run
    if name == "dynts" and any(e < prompt_len + steps for e in end_think):
        # answer tokens are protected: leave room for them, as a real budget must
        budget = max(budget, prompt_len + window + (prompt_len + steps - min(end_think)) + 2)
    policy = build(name, budget, window, ratio, prompt_len)
    g = torch.Generator().manual_seed(seed)
    policy.reset(B, budget)
    pos = torch.empty(B, 0, dtype=torch.long)  # what the cache's positions would be
    seen, evictions = 0, 0
    for T in [prompt_len] + [1] * steps:
        positions = torch.arange(seen, seen + T)
        tokens = torch.randint(0, 250, (B, T), generator=g)
        for b in range(B):  # each row's </think>
            tokens[b, (positions == end_think[b])] = END_THINK
        hidden = torch.randn(B, T, 2, generator=g)
        hidden[..., 0] = hidden[..., 0].round()  # ties
        hidden[..., 0][torch.rand(B, T, generator=g) < 0.05] = NAN
        policy.observe(tokens, hidden, positions)
        pos, seen = torch.cat([pos, positions.expand(B, T)], dim=1), seen + T
        assert policy.length == pos.shape[1] <= budget
        if policy.should_evict(policy.length):
            L = policy.length
            idx = policy.select()
            n = idx.shape[1]
            protected = [protected_positions(name, policy, prompt_len, end_think[b], seen) for b in range(B)]
            n_protected_older = max(len([p for p in pos[b, :L - window].tolist() if p in protected[b]])
                                    for b in range(B))
            assert n == min(L - 1, window + max(n_protected_older, math.floor(ratio * (L - window))))
            for b in range(B):
                row = idx[b].tolist()
                assert row == sorted(set(row))
                assert row[-window:] == list(range(L - window, L)) if window else True
                kept = set(pos[b, idx[b]].tolist())
                if n < L - 1 or name != "dynts":
                    assert protected[b] & set(pos[b].tolist()) <= kept
                if name == "window":  # only the newest
                    assert kept == set(pos[b, L - n:].tolist())
            policy.keep(idx)
            pos = pos.gather(1, idx)
            evictions += 1
            assert policy.length == n < budget
    assert evictions >= (prompt_len + steps - budget >= 0)  # the budget was hit: at least one eviction


def test_dynts_keeps_the_top_predicted_thinking_tokens():
    policy = dynts.DynTS(budget=10, window=2, ratio=0.5, predictor=ScoreIsHidden(), prompt_len=2,
                         end_think_id=END_THINK, eot_id=EOT)
    policy.reset(1, 10)
    scores = torch.tensor([0.0, 0.0, 5.0, 1.0, 7.0, 2.0, 6.0, 0.5, 3.0, 3.0])
    hidden = torch.stack([scores, torch.zeros(10)], dim=-1)[None]  # (1, 10, 2)
    policy.observe(torch.zeros(1, 10, dtype=torch.long), hidden, torch.arange(10))
    # older: 8 slots, 2 of them the protected prompt; floor(0.5 * 8) = 4 > 2: keep 4 + window 2
    assert policy.select().tolist() == [[0, 1, 4, 6, 8, 9]]


def test_dynts_protects_answer_tokens_and_not_padding_after_end_of_text():
    policy = dynts.DynTS(budget=20, window=1, ratio=0.3, predictor=ScoreIsHidden(), prompt_len=1,
                         end_think_id=END_THINK, eot_id=EOT)
    policy.reset(1, 20)
    for i, tok in enumerate([1, 5, END_THINK, 7, EOT, 9]):
        policy.observe(torch.tensor([[tok]]), torch.zeros(1, 1, 2), torch.tensor([i]))
    assert policy.scores[0, :6].tolist() == [INF, 0.0, 0.0, INF, INF, -INF]


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


def test_a_budget_full_of_protected_tokens_still_frees_a_slot():
    policy = dynts.DynTS(budget=6, window=1, ratio=0.3, predictor=ScoreIsHidden(), prompt_len=2,
                         end_think_id=END_THINK, eot_id=EOT)
    policy.reset(1, 6)
    # the prompt ends with </think>: every token is protected
    policy.observe(torch.tensor([[1, END_THINK, 4, 5, 6, 7]]), torch.zeros(1, 6, 2), torch.arange(6))
    assert policy.select().tolist() == [[1, 2, 3, 4, 5]]  # the oldest protected token goes


def test_predictor_has_the_papers_shape_and_is_non_negative():
    p = dynts.ImportancePredictor(64)
    sizes = [(m.in_features, m.out_features) for m in p.net if isinstance(m, torch.nn.Linear)]
    assert sizes == [(64, 128), (128, 32), (32, 1)]
    out = p(torch.randn(3, 7, 64) * 10)
    assert out.shape == (3, 7) and (out >= 0).all()
