"""model.py: the cached fast path against slow, obviously-correct references."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from model import GPT, PRESETS, GPTConfig, KVCache, get_encoding

MHA = GPTConfig(block_size=128, n_layer=2, n_head=4, n_kv_head=4, n_embd=32, mlp_hidden=64)
GQA = GPTConfig(block_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=64)


def tiny_model(config, seed=0):
    torch.manual_seed(seed)
    return GPT(config).eval()


def reference_forward(model: GPT, idx: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """The slow reference: every position recomputed from scratch, query i attending exactly to
    the positions j with visible[b, i, j]. Returns final hidden states (B, T, C)."""
    B, T = idx.shape
    cfg = model.config
    x = model.wte(idx) + model.wpe(torch.arange(T))
    for block in model.blocks:
        attn = block.attn
        h = block.ln_1(x)
        q, k, v = attn.c_attn(h).split([cfg.n_embd, cfg.n_kv_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim], dim=2)
        q = q.view(B, T, cfg.n_head, cfg.head_dim).transpose(1, 2)
        k = k.view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2).repeat_interleave(cfg.n_head // cfg.n_kv_head, 1)
        v = v.view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2).repeat_interleave(cfg.n_head // cfg.n_kv_head, 1)
        s = (q @ k.transpose(-2, -1)) / math.sqrt(cfg.head_dim)  # (B, H, T, T)
        s = s.masked_fill(~visible[:, None], float("-inf"))
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, cfg.n_embd)
        x = x + attn.c_proj(y)
        x = x + block.mlp(block.ln_2(x))
    return model.ln_f(x)


@pytest.mark.parametrize("config", [MHA, GQA], ids=["mha", "gqa"])
@pytest.mark.parametrize("batch", [1, 3])
def test_cached_decoding_equals_uncached_forward(config, batch):
    model = tiny_model(config)
    idx = torch.randint(0, config.vocab_size, (batch, 40))
    with torch.no_grad():
        _, full_hidden, _ = model(idx)
        full_logits = model.lm_head(full_hidden)  # (B, T, vocab)
        causal = torch.ones(40, 40, dtype=torch.bool).tril().expand(batch, 40, 40)
        torch.testing.assert_close(full_hidden, reference_forward(model, idx, causal), rtol=1e-5, atol=1e-5)
        cache = KVCache(config, batch, capacity=40)
        logits, _, _ = model(idx[:, :15], cache)  # prefill
        torch.testing.assert_close(logits, full_logits[:, 14], rtol=1e-5, atol=1e-5)
        for t in range(15, 40):
            logits, _, _ = model(idx[:, t:t + 1], cache)
            torch.testing.assert_close(logits, full_logits[:, t], rtol=1e-5, atol=1e-5)
    assert cache.length == cache.seen == 40
    assert torch.equal(cache.pos, torch.arange(40).expand(batch, 40))


def test_chunked_prefill_on_a_warm_cache_equals_uncached():
    model = tiny_model(GQA)
    idx = torch.randint(0, 259, (2, 30))
    with torch.no_grad():
        _, full_hidden, _ = model(idx)
        cache = KVCache(GQA, 2, capacity=30)
        model(idx[:, :10], cache)
        _, hidden, _ = model(idx[:, 10:30], cache)
    torch.testing.assert_close(hidden, full_hidden[:, 10:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [MHA, GQA], ids=["mha", "gqa"])
def test_eviction_oracle_compacted_cache_equals_masked_full_cache(config):
    """Decode with evictions; the reference recomputes everything with each query seeing
    exactly the slots that were in the compacted cache when it was decoded."""
    B, P, N, cap = 3, 8, 40, 16
    model = tiny_model(config, seed=1)
    idx = torch.randint(0, config.vocab_size, (B, P + N))
    visible = torch.zeros(B, P + N, P + N, dtype=torch.bool)
    visible[:, :P, :P] = torch.ones(P, P, dtype=torch.bool).tril()
    gen = torch.Generator().manual_seed(0)
    cache = KVCache(config, B, capacity=cap)
    decoded, evictions = [], 0
    with torch.no_grad():
        model(idx[:, :P], cache)
        for t in range(P, P + N):
            logits, _, _ = model(idx[:, t:t + 1], cache)
            for b in range(B):  # query t saw exactly the live slots, itself included
                visible[b, t, cache.pos[b, :cache.length]] = True
            decoded.append(logits)
            if cache.length == cap:  # evict a random half, per row, keeping the newest slot
                keep = torch.stack([torch.randperm(cap - 1, generator=gen)[:7].sort().values for _ in range(B)])
                cache.keep(torch.cat([keep, torch.full((B, 1), cap - 1)], dim=1))
                evictions += 1
        reference = model.lm_head(reference_forward(model, idx, visible))  # (B, T, vocab)
    assert evictions >= 3
    for i, t in enumerate(range(P, P + N)):
        torch.testing.assert_close(decoded[i], reference[:, t], rtol=1e-5, atol=1e-5)


def test_keep_compacts_bit_identically_and_moves_positions():
    cfg = GQA
    cache = KVCache(cfg, batch_size=2, capacity=10)
    model = tiny_model(cfg)
    with torch.no_grad():
        model(torch.randint(0, 259, (2, 10)), cache)
    before_kv, before_pos = cache.kv.clone(), cache.pos.clone()
    idx = torch.tensor([[0, 3, 4, 9], [1, 2, 7, 9]])
    cache.keep(idx)
    assert cache.length == 4 and cache.seen == 10
    for b in range(2):
        assert torch.equal(cache.kv[:, :, b, :, :4], before_kv[:, :, b, :, idx[b]])  # bit-identical
        assert torch.equal(cache.pos[b, :4], before_pos[b, idx[b]])
    with torch.no_grad():  # the next token takes position 10 (tokens seen), not 4 (cache length)
        model(torch.zeros(2, 1, dtype=torch.long), cache)
    assert cache.pos[:, 4].tolist() == [10, 10] and cache.length == 5 and cache.seen == 11


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_keep_in_chunks_equals_one_gather(data):
    """keep moves the slots a chunk at a time, in place: any chunk size gives what one gather of
    the whole buffer gives (the slow, obviously-correct reference)."""
    B, cap = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 40))
    length = data.draw(st.integers(1, cap))
    n = data.draw(st.integers(1, length))
    rows = [sorted(data.draw(st.lists(st.integers(0, length - 1), min_size=n, max_size=n, unique=True)))
            for _ in range(B)]
    idx, chunk = torch.tensor(rows), data.draw(st.integers(1, n + 2))
    cache = KVCache(GQA, batch_size=B, capacity=cap)
    cache.kv.normal_()
    cache.pos.copy_(torch.randperm(1000)[:B * cap].view(B, cap))
    cache.length = length
    kv, pos = cache.kv.clone(), cache.pos.clone()
    cache.keep(idx, chunk=chunk)
    L, _, _, Hkv, _, D = kv.shape
    expected = kv.gather(4, idx.view(1, 1, B, 1, n, 1).expand(L, 2, B, Hkv, n, D))
    assert cache.length == n
    assert torch.equal(cache.kv[:, :, :, :, :n], expected)
    assert torch.equal(cache.pos[:, :n], pos.gather(1, idx))


def test_need_attn_gives_the_same_output_and_attention_that_sums_to_one_per_query():
    model = tiny_model(GQA)
    idx = torch.randint(0, 259, (2, 12))
    with torch.no_grad():
        c1, c2 = KVCache(GQA, 2, 13), KVCache(GQA, 2, 13)
        l1, h1, a1 = model(idx, c1)
        l2, h2, a2 = model(idx, c2, need_attn=True)
        assert a1 is None and a2.shape == (2, 12)
        torch.testing.assert_close(h1, h2, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a2.sum(dim=1), torch.full((2,), 12.0))  # 12 queries
        # the first token is seen by all 12 queries, the last only by itself
        assert (a2[:, 0] > a2[:, -1]).all()
        _, _, a3 = model(idx[:, :1], c2, need_attn=True)
        assert a3.shape == (2, 13)
        torch.testing.assert_close(a3.sum(dim=1), torch.ones(2))


def test_going_past_block_size_is_a_clear_error():
    cfg = GPTConfig(block_size=8, n_layer=1, n_head=2, n_kv_head=1, n_embd=16, mlp_hidden=32)
    model = tiny_model(cfg)
    cache = KVCache(cfg, 1, capacity=8)
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), cache)
        cache.keep(torch.tensor([[4, 5]]))  # evictions do not reset positions
        model(torch.zeros(1, 2, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="exceeds block_size 8"):
            model(torch.zeros(1, 1, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="exceeds block_size 8"):
            model(torch.zeros(1, 9, dtype=torch.long))


def test_cache_overflow_is_a_clear_error():
    model = tiny_model(GQA)
    cache = KVCache(GQA, 1, capacity=4)
    with torch.no_grad(), pytest.raises(ValueError, match="capacity 4"):
        model(torch.zeros(1, 5, dtype=torch.long), cache)


def test_presets_have_the_shapes_they_claim():
    p = PRESETS["paper-8b"]
    assert (p.n_layer, p.n_embd, p.n_head, p.n_kv_head, p.head_dim) == (32, 4096, 32, 8, 128)
    assert p.block_size >= 16384
    assert 2 * p.n_embd * p.mlp_hidden == 3 * 4096 * 14336  # the SwiGLU's weight bytes
    g = PRESETS["gpt2"]
    n_params = sum(t.numel() for t in GPT(g).parameters())
    assert 123e6 < n_params < 125e6


def test_config_rejects_head_counts_that_do_not_divide():
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="n_head"):
        GPTConfig(n_embd=30, n_head=4)


def test_byte_encoding_needs_no_download_and_round_trips():
    enc = get_encoding()
    text = "Q: 3+4? <think>seven, check: 7</think>7<|endoftext|>"
    ids = enc.encode(text, allowed_special="all")
    assert max(ids) < 259 and enc.n_vocab == 259
    assert ids.count(257) == ids.count(258) == ids.count(256) == 1
    assert enc.decode(ids) == text
