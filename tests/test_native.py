"""lab/policies.py's native baselines and model.KVCache's per-head compaction: a kept set per
(layer, row, kv head), against slow references."""

import math

import pytest
torch = pytest.importorskip("torch")
from hypothesis import given, settings
from hypothesis import strategies as st

import generate
from dynts import ImportancePredictor, Policy
from lab import policies
from model import GPT, GPTConfig, KVCache, get_encoding

INF = float("inf")
CONFIG = GPTConfig(block_size=256, vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=16, mlp_hidden=32)


def test_a_per_head_compaction_moves_each_heads_own_slots():
    torch.manual_seed(0)
    cache = KVCache(CONFIG, 2, 12)
    cache.kv.normal_()
    cache.advance(10)
    before = cache.kv.clone()
    L, B, H = CONFIG.n_layer, 2, CONFIG.n_kv_head
    idx = torch.stack([torch.randperm(10)[:6].sort().values for _ in range(L * B * H)]).view(L, B, H, 6)
    cache.keep(idx, chunk=4)
    for l in range(L):  # the slow reference: one (layer, row, head) at a time
        for b in range(B):
            for h in range(H):
                assert torch.equal(cache.kv[l, :, b, h, :6], before[l, :, b, h, idx[l, b, h]])
    assert cache.length == 6 and cache.pos[:, :6].tolist() == idx[0, :, 0].tolist()  # layer 0's head 0


@st.composite
def rankings(draw):
    B, L = draw(st.integers(1, 3)), draw(st.integers(4, 30))
    window = draw(st.integers(0, L - 2))
    ratio = draw(st.sampled_from([0.1, 0.3, 0.5]))
    scores = draw(st.lists(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, INF]), min_size=L, max_size=L),
                           min_size=B, max_size=B))
    return torch.tensor(scores), window, ratio


@settings(max_examples=200, deadline=None)
@given(rankings())
def test_per_head_selection_is_the_shared_one_when_every_head_scores_alike(problem):
    ranking, window, ratio = problem
    B, L = ranking.shape
    budget = L
    shared, per_head = Policy(budget, window, ratio), policies.PerHead(budget, window, ratio)
    if window + math.floor(ratio * (L - window)) >= budget:
        return  # (the policies refuse a ratio that keeps everything)
    want = shared.select(ranking)  # (B, n_keep)
    got = per_head.select(ranking[None, :, None].expand(3, B, 2, L))  # (layers, B, heads, n_keep)
    assert torch.equal(got, want[None, :, None].expand_as(got))
    assert got.shape[-1] <= budget - 1 and (got[..., got.shape[-1] - window:] == torch.arange(L - window, L)).all()


def test_per_head_selection_keeps_each_heads_own_top_within_the_budget():
    ranking = torch.tensor([[[[5.0, 1, 1, 9, 0, 0]], [[1.0, 7, 1, 1, 0, 0]]]])  # (1 layer, B 2, 1 head, 6)
    policy = policies.PerHead(budget=6, window=2, ratio=0.25)  # keeps 2 + floor(0.25 x 4) = 3 of 6
    idx = policy.select(ranking)
    assert idx.tolist() == [[[[3, 4, 5]], [[1, 4, 5]]]]  # each row's own best older slot, and the window


def h2o_reference(attention_steps, prompt_len, budget, window):
    """H2O recomputed from scratch, one (layer, row, head) at a time: the live positions slot
    by slot, each one's score the sum of the attention its slot received at every step so far;
    once `budget` are live, the lowest-scoring position outside the newest `window` leaves
    (ties: the oldest), and the last slot's position moves into its slot. Returns the live
    positions and their scores after each step, slot by slot, per (layer, row, head)."""
    L, B, H = attention_steps[0].shape[:3]
    live = {(l, b, h): [] for l in range(L) for b in range(B) for h in range(H)}
    score = {key: {} for key in live}
    history, seen = [], 0
    for attention in attention_steps:
        new = prompt_len if seen == 0 else 1
        for key, positions in live.items():
            positions += range(seen, seen + new)
            for slot, p in enumerate(positions):  # slot j holds the j-th live position
                score[key][p] = score[key].get(p, 0.0) + float(attention[key][slot])
            if len(positions) >= budget:
                older = sorted(positions)[:len(positions) - window]
                gone = positions.index(min(older, key=lambda p: (score[key][p], p)))
                positions[gone] = positions[-1]
                positions.pop()
        seen += new
        history.append({key: (list(positions), [score[key][p] for p in positions]) for key, positions in live.items()})
    return history


def test_h2o_native_evicts_one_token_per_step_as_a_from_scratch_reference_does():
    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    budget, window, prompt = 20, 4, list(range(1, 9))
    policy = policies.make_policy("h2o-native", budget, window, 0.3, len(prompt))
    steps, kept = [], []
    forward = model.forward

    def spy(idx, cache=None, need_attention=False, mask=None):
        out = forward(idx, cache, need_attention, mask)
        steps.append(out[2].clone())  # (layers, B, heads, S): what the policy is about to observe
        return out

    def on_step(cache, eviction):
        kept.append((policy.positions[..., :policy.length].clone(), policy.scores[..., :policy.length].clone()))

    model.forward = spy
    tokens, stats = generate.generate(model, prompt, policy, 40, num_samples=2, temperature=1.0,
                                      generator=torch.Generator().manual_seed(0), on_step=on_step)
    reference = h2o_reference(steps, len(prompt), budget, window)
    assert stats["evictions"] == len(steps) - (budget - len(prompt))  # one per step once full
    assert stats["peak_kv_tokens"] == budget
    for (got, got_scores), want in zip(kept, reference):
        for key, (positions, scores) in want.items():
            assert got[key].tolist() == positions
            torch.testing.assert_close(got_scores[key], torch.tensor(scores))


def test_a_ratio_is_checked_only_where_the_policy_uses_it():
    """A ratio that keeps every older token is refused for a policy cutting by it, and not checked
    for one on its own schedule, which never reads it."""
    for name in ("dynts", "rkv-native-cut+p", "h2o+p"):
        with pytest.raises(ValueError, match="--ratio 1.0 keeps all"):
            policies.make_policy(name, 40, 8, 1.0, 4, ImportancePredictor(CONFIG.n_embd), get_encoding())
    for name in ("h2o-native", "rkv-native+p", "rkv-buffer+p"):
        assert policies.make_policy(name, 40, 8, 1.0, 4).budget == 40


def test_h2o_native_heads_keep_what_each_attended_to_and_the_prompt_when_protected():
    """Head 0 of every layer attends to even positions, head 1 to odd ones: each keeps its own."""
    for name in ("h2o-native", "h2o-native+p"):
        policy = policies.make_policy(name, 10, 2, 0.3, 3)
        cache = KVCache(CONFIG, 1, 10)
        policy.reset(1, 10)
        for T in [3] + [1] * 20:
            positions = torch.arange(cache.seen, cache.seen + T)
            cache.advance(T)
            live = torch.cat([policy.positions[..., :policy.length], positions.expand(2, 1, 2, T)], dim=-1) \
                if policy.scores is not None else positions.expand(2, 1, 2, T)
            attention = (live % 2 == torch.tensor([0, 1]).view(1, 1, 2, 1)).float()  # (layers, B, heads, S)
            policy.observe(torch.zeros(1, T, dtype=torch.long), None, positions, attention)
            if policy.should_evict(cache.length):
                policy.evict(cache)
        older = policy.positions[..., :policy.length].sort(dim=-1).values[..., :-2]  # beside the window
        prompt = older < 3
        if name.endswith("+p"):
            assert (policy.positions[..., :3] == torch.arange(3)).all()  # every head keeps the prompt
        assert (older[:, :, 0][~prompt[:, :, 0]] % 2 == 0).all() and (older[:, :, 1][~prompt[:, :, 1]] % 2 == 1).all()


def redundancy_reference(keys: torch.Tensor, threshold: float) -> torch.Tensor:
    """key_redundancy for one head (L, D), spelled out key by key."""
    L = keys.shape[0]
    unit = [k / k.norm() for k in keys.float()]
    rows = []
    for i in range(L):
        sim = [float(unit[i] @ unit[j]) if j != i else 0.0 for j in range(L)]
        duplicates = [j for j in range(L) if sim[j] > threshold]
        sim[max(duplicates) if duplicates else 0] = 0.0  # the newest duplicate's similarity does not count
        rows.append(sum(sim) / L)
    return torch.tensor(rows).softmax(dim=0)


def test_key_redundancy_matches_a_key_by_key_reference():
    torch.manual_seed(0)
    keys = torch.randn(5, 12, 4)
    keys[:, 7] = keys[:, 2] + 0.01  # near duplicates
    want = torch.stack([redundancy_reference(k, 0.5) for k in keys])
    for max_elements in (12 * 12, 2 * 12 * 12, 2**27):  # one head a chunk, two, all five
        torch.testing.assert_close(policies.key_redundancy(keys, 0.5, max_elements), want)


def test_rkv_native_drops_the_older_duplicates_first():
    """Keys A B A C A in every head, no attention: the unique keys (B, C) and the newest A stay."""
    A, B, C = torch.eye(3)
    cache = KVCache(GPTConfig(block_size=16, n_layer=1, n_head=1, n_kv_head=1, n_embd=3, mlp_hidden=4), 1, 5)
    cache.kv[0, 0, 0, 0, :5] = torch.stack([A, B, A, C, A])
    cache.advance(5)
    policy = policies.RKVNative(budget=5, window=0)  # buffer: half the older slots, 2; keeps 3
    policy.reset(1, 5)
    policy.observe(torch.zeros(1, 5, dtype=torch.long), None, torch.arange(5), torch.zeros(1, 1, 1, 5))
    assert policy.should_evict(cache.length)
    kept, _ = policy.evict(cache)
    assert kept.tolist() == [[1, 3, 4]]


def full_cache_seen_by(*policies_):
    """A cache of 2 rows holding 40 random slots, and the same random attention observed by each policy."""
    torch.manual_seed(0)
    cache = KVCache(CONFIG, 2, 40)
    cache.kv.normal_()
    cache.advance(40)
    attention = torch.rand(CONFIG.n_layer, 2, CONFIG.n_kv_head, 40)
    for policy in policies_:
        policy.reset(2, 40)
        policy.observe(torch.zeros(2, 40, dtype=torch.long), None, torch.arange(40), attention)
    return cache


def test_rkv_native_cut_keeps_rkvs_choice_on_dynts_schedule():
    """The same cache and attention: each eviction keeps as many slots as DynTS's rule does
    (the window and ratio of the older ones, not the budget less R-KV's buffer), and those are
    R-KV's best-scored slots."""
    native, cut = policies.RKVNative(40, 8, 0.3), policies.RKVNativeCut(40, 8, 0.3)
    cache = full_cache_seen_by(native, cut)
    assert native.should_evict(40) and cut.should_evict(40)
    want = Policy(40, 8, 0.3).n_keep(40, 0)  # 8 + floor(0.3 x 32) = 17
    scores = native.eviction_scores(cache)
    idx = cut.select(scores)
    assert idx.shape[-1] == want and native.n_keep(40, 0) == 40 - native.buffer != want
    assert (idx[..., -8:] == torch.arange(32, 40)).all()  # the window
    older = scores[..., :32].topk(want - 8, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(idx[..., :-8], older)


def test_rkv_buffer_keeps_the_official_choice_on_rkvs_schedule():
    """The same cache and attention: `rkv-buffer` keeps as many slots as `rkv-native` (the budget
    less R-KV's buffer), and those are the official `rkv`'s best-scored ones."""
    official, buffered = policies.RKV(40, 8, 0.3), policies.RKVBuffer(40, 8, 0.3)
    cache = full_cache_seen_by(official, buffered)
    scores = official.eviction_scores(cache)  # (B, L)
    idx = buffered.select(scores)
    want = policies.RKVNative(40, 8, 0.3).n_keep(40, 0)  # 40 less a buffer of min(128, 32 // 2)
    assert idx.shape == (2, want) and want == 24 != official.n_keep(40, 0)
    assert (idx[:, -8:] == torch.arange(32, 40)).all()  # the window
    assert torch.equal(idx[:, :-8], scores[:, :32].topk(want - 8, dim=-1).indices.sort(dim=-1).values)


def test_dynts_buffer_keeps_dynts_choice_on_rkvs_schedule():
    """The same scores: `dynts-buffer` keeps as many slots as `rkv-native` (the budget less R-KV's
    buffer), and those are DynTS's best-predicted ones, the prompt first."""
    enc, predictor = get_encoding(), ImportancePredictor(CONFIG.n_embd)
    cut, buffered = (policies.make_policy(name, 40, 8, 0.3, 4, predictor, enc) for name in ("dynts", "dynts-buffer"))
    ranking = torch.rand(2, 40)
    ranking[:, :4] = INF  # the protected prompt, as DynTS's `ranking` sets it
    idx = buffered.select(ranking)
    want = policies.RKVNative(40, 8, 0.3).n_keep(40, 4)  # 40 less a buffer of min(128, 32 // 2)
    assert idx.shape == (2, want) and want == 24 != cut.n_keep(40, 4) == 17
    assert (idx[:, :4] == torch.arange(4)).all() and (idx[:, -8:] == torch.arange(32, 40)).all()
    assert torch.equal(idx[:, :-8], ranking[:, :32].topk(want - 8, dim=-1).indices.sort(dim=-1).values)


def test_the_native_policies_decode_within_their_budget():
    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    for name in ("h2o-native", "snapkv-native+p", "rkv-native", "rkv-native-cut+p", "rkv-buffer+p", "dynts-buffer"):
        policy = policies.make_policy(name, 40, 8, 0.3, 8, ImportancePredictor(CONFIG.n_embd), get_encoding())
        _, stats = generate.generate(model, list(range(1, 9)), policy, 120, num_samples=2, temperature=1.0,
                                     generator=torch.Generator().manual_seed(0))
        assert stats["peak_kv_tokens"] <= 40 and stats["evictions"] > 0


def test_a_policy_that_evicts_every_step_marks_the_stream_once():
    import io
    out = io.StringIO()
    stats = generate.main(policy="h2o-native", init="random", preset="tiny", device="cpu", budget=60, window=10,
                          max_new_tokens=150, prompt="Question: which tokens stay? <think>", out=out)
    assert stats["evictions"] > 50 and out.getvalue().count("[evict") == 1
    assert "[evict 60->59, one a step from here]" in out.getvalue()
    assert " older thinking tokens in layer 0's kv head 0) | " in out.getvalue()  # each head keeps its own
