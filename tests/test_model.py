"""model.py: the cached fast path against slow, obviously-correct references."""

import math

import pytest
torch = pytest.importorskip("torch")
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from model import GPT, PRESETS, GPTConfig, KVCache, get_encoding, rope_frequencies

MHA = GPTConfig(block_size=128, n_layer=2, n_head=4, n_kv_head=4, n_embd=32, mlp_hidden=64)
GQA = GPTConfig(block_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=64)
# The Llama family's blocks: RMSNorm, SwiGLU, RoPE (with Llama 3's scaling, its original context
# shrunk so that all three frequency bands occur at head_dim 8), GQA, an untied head; and Qwen2's
# biases on q, k, v.
LLAMA = GPTConfig(block_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, mlp_hidden=48, bias=False,
                  norm="rmsnorm", mlp="swiglu", positions="rope", rope_theta=500.0, tie_embeddings=False,
                  rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=64))
QWEN2 = GPTConfig(block_size=128, n_layer=2, n_head=4, n_kv_head=1, n_embd=32, mlp_hidden=48, bias=False,
                  norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", positions="rope", qkv_bias=True, tie_embeddings=False)
CONFIGS = dict(mha=MHA, gqa=GQA, llama=LLAMA, qwen2=QWEN2)


def tiny_model(config, seed=0):
    """A random model; biases and norm weights random too (their init is 0 and 1)."""
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def rotate(x: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """RoPE the slow way: dimensions i and i + D/2 as one complex number, turned by the angle
    position * inv_freq[i]. x (B, heads, T, D) at positions 0..T-1."""
    D, T = x.shape[-1], x.shape[2]
    z = torch.complex(x[..., :D // 2].double(), x[..., D // 2:].double())
    z = z * torch.polar(torch.ones(T, D // 2, dtype=torch.double), torch.arange(T).double()[:, None] * inv_freq.double())
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def reference_forward(model: GPT, idx: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """The slow reference: every position recomputed from scratch, query i attending exactly to
    the positions j with visible[b, i, j]. Returns final hidden states (B, T, C)."""
    B, T = idx.shape
    cfg = model.config
    x = model.wte(idx) + (model.wpe(torch.arange(T)) if cfg.positions == "learned" else 0)
    for block in model.blocks:
        attn = block.attn
        h = block.ln_1(x)
        q, k, v = attn.c_attn(h).split([cfg.n_embd, cfg.n_kv_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim], dim=2)
        q = q.view(B, T, cfg.n_head, cfg.head_dim).transpose(1, 2)
        k = k.view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
        if cfg.positions == "rope":
            q, k = rotate(q, model.inv_freq), rotate(k, model.inv_freq)
        k = k.repeat_interleave(cfg.n_head // cfg.n_kv_head, 1)
        v = v.view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2).repeat_interleave(cfg.n_head // cfg.n_kv_head, 1)
        s = (q @ k.transpose(-2, -1)) / math.sqrt(cfg.head_dim)  # (B, H, T, T)
        s = s.masked_fill(~visible[:, None], float("-inf"))
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, cfg.n_embd)
        x = x + attn.c_proj(y)
        x = x + block.mlp(block.ln_2(x))
    return model.ln_f(x)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
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


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_chunked_prefill_on_a_warm_cache_equals_uncached(config):
    model = tiny_model(config)
    idx = torch.randint(0, 259, (2, 30))
    with torch.no_grad():
        _, full_hidden, _ = model(idx)
        cache = KVCache(config, 2, capacity=30)
        model(idx[:, :10], cache)
        _, hidden, _ = model(idx[:, 10:30], cache)
    torch.testing.assert_close(hidden, full_hidden[:, 10:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
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


@pytest.mark.parametrize("config", [GQA, LLAMA], ids=["gpt2", "llama"])
def test_need_attention_gives_the_same_output_and_attention_that_sums_to_one_per_query(config):
    model = tiny_model(config)
    idx = torch.randint(0, 259, (2, 12))
    with torch.no_grad():
        c1, c2 = KVCache(config, 2, 13), KVCache(config, 2, 13)
        l1, h1, a1 = model(idx, c1)
        l2, h2, heads = model(idx, c2, need_attention=True)
        assert a1 is None and heads.shape == (config.n_layer, 2, config.n_kv_head, 12)
        torch.testing.assert_close(h1, h2, rtol=1e-5, atol=1e-5)
        # every layer and kv head: each of the 12 queries spreads one unit of attention
        torch.testing.assert_close(heads.sum(dim=-1), torch.full(heads.shape[:3], 12.0))
        a2 = heads.mean(dim=(0, 2))  # (2, 12): the shared ranking's
        # the first token is seen by all 12 queries, the last only by itself
        assert (a2[:, 0] > a2[:, -1]).all()
        _, _, a3 = model(idx[:, :1], c2, need_attention=True)
        assert a3.shape == (config.n_layer, 2, config.n_kv_head, 13)
        torch.testing.assert_close(a3.sum(dim=-1), torch.ones(a3.shape[:3]))


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


def n_params(config: GPTConfig) -> int:
    """Parameters of a model of this shape, counted without building it (on the meta device)."""
    with torch.device("meta"):
        return sum(t.numel() for t in GPT(config).parameters())


def test_presets_have_the_shapes_they_claim():
    p = PRESETS["r1-llama-8b"]
    assert (p.n_layer, p.n_embd, p.n_head, p.n_kv_head, p.head_dim) == (32, 4096, 32, 8, 128)
    assert p.block_size >= 16384
    assert p.mlp == "swiglu" and 3 * p.n_embd * p.mlp_hidden == 3 * 4096 * 14336  # the SwiGLU's weight bytes
    assert 123e6 < n_params(PRESETS["gpt2"]) < 125e6
    # The published sizes: Llama 3.1 8B has 8,030,261,248 parameters; R1-Distill-Qwen-1.5B
    # 1,777,088,000 (1.54B without its untied 151936 x 1536 LM head).
    assert n_params(PRESETS["r1-llama-8b"]) == 8_030_261_248
    assert n_params(PRESETS["r1-qwen-1.5b"]) == 1_777_088_000


def test_rope_frequencies_follow_llama3_scaling():
    """The three bands of Llama 3's scaling, at the real shape: wavelengths shorter than
    8192 / 4 = 2048 positions unchanged, longer than 8192 divided by 8, blended between."""
    inv = rope_frequencies(PRESETS["r1-llama-8b"])
    plain = 1.0 / (500000.0 ** (torch.arange(0, 128, 2).float() / 128))
    wavelen = 2 * math.pi / plain
    high, low = wavelen < 2048, wavelen > 8192
    assert high.sum() > 0 and low.sum() > 0 and (~high & ~low).sum() > 0
    torch.testing.assert_close(inv[high], plain[high])
    torch.testing.assert_close(inv[low], plain[low] / 8)
    mid = ~high & ~low
    assert ((inv[mid] < plain[mid]) & (inv[mid] > plain[mid] / 8)).all()


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
