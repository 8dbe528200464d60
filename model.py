"""A decoder-only transformer with an explicit, preallocated KV cache: GPT-2's blocks, or the
Llama / Qwen2 family's (RMSNorm, SwiGLU, rotary positions, grouped-query attention), chosen
by config fields, each option a few lines next to its alternative.

Read it top to bottom: the tokenizer, the config, the KV cache, rotary positions, attention, the
MLP, a block, the model. It knows nothing of DynTS: dynts.py decides which cache slots to keep and calls
`KVCache.keep(idx)`; the model only writes, reads and compacts the cache it is given.

Shapes: B batch, T new tokens in this forward, S live cache slots (after writing this
step's tokens), C n_embd, H n_head, Hkv n_kv_head, D head_dim.
"""

import math
from dataclasses import dataclass

import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F


# -----------------------------------------------------------------------------
# Tokenizer: bytes plus three special tokens, built locally (no download).

THINK, END_THINK, EOT = "<think>", "</think>", "<|endoftext|>"


def get_encoding(name: str = "bytes-think") -> tiktoken.Encoding:
    """The byte-level encoding of the default model: ids 0-255 are the bytes, 256-258 the
    special tokens. Built from ranks we supply, so it needs no network (tiktoken's named
    encodings download their files on first use)."""
    if name != "bytes-think":
        raise ValueError(f"unknown encoding {name!r}: only 'bytes-think' ships with this repository")
    return tiktoken.Encoding(
        name="bytes-think",
        pat_str=r"[\s\S]",  # one character a piece: nothing to merge anyway
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={EOT: 256, THINK: 257, END_THINK: 258},
    )


# -----------------------------------------------------------------------------
# Config


@dataclass
class GPTConfig:
    block_size: int = 4096  # the longest sequence: learned positions' table size, RoPE's limit
    vocab_size: int = 259  # token ids; the byte encoding above uses 259
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # query heads per attention layer
    n_kv_head: int = 4  # key/value heads; < n_head is grouped-query attention (GQA)
    n_embd: int = 256  # the residual stream's width; head_dim = n_embd // n_head
    mlp_hidden: int = 1024  # the MLP's hidden width (GPT-2 uses 4 * n_embd)
    bias: bool = True  # biases in every Linear layer and norm, as in GPT-2
    # The Llama / Qwen2 family (the paper's R1-Distill models) differs in these fields:
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (Llama, Qwen2: no mean, no bias)
    norm_eps: float = 1e-5  # added to the variance (Llama 3: 1e-5, Qwen2: 1e-6)
    mlp: str = "gelu"  # "gelu": proj(gelu(fc(x))); "swiglu": proj(silu(gate(x)) * fc(x))
    positions: str = "learned"  # "learned": a table added to the embeddings; "rope": q and k rotated
    rope_theta: float = 10000.0  # RoPE's base: frequencies theta^(-2i/D) (Llama 3: 500000)
    rope_scaling: dict | None = None  # Llama 3's long-context frequency scaling: factor, low_freq_factor,
    #                                   high_freq_factor, original_max_position_embeddings; None: none
    qkv_bias: bool = False  # biases on q, k and v only (Qwen2); `bias` puts them everywhere
    tie_embeddings: bool = True  # the LM head reuses wte's weights (GPT-2); False: its own (Llama 3 8B)

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        for name, value, allowed in (("norm", self.norm, ("layernorm", "rmsnorm")), ("mlp", self.mlp, ("gelu", "swiglu")),
                                     ("positions", self.positions, ("learned", "rope"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE rotates pairs of dimensions: head_dim ({self.head_dim}) must be even")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# Llama 3's rope_scaling, as in Meta-Llama-3.1-8B's (and R1-Distill-Llama-8B's) config.json.
LLAMA3_ROPE_SCALING = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
LLAMA_STYLE = dict(norm="rmsnorm", mlp="swiglu", positions="rope", bias=False)

PRESETS = {
    # A CPU runs it in seconds: for tests and mechanics-only runs.
    "tiny": GPTConfig(block_size=2048, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=256),
    # GPT-2 small (124M), vocabulary padded to a multiple of 64 as in nanoGPT.
    "gpt2": GPTConfig(block_size=1024, vocab_size=50304, n_layer=12, n_head=12, n_kv_head=12,
                      n_embd=768, mlp_hidden=3072),
    # The paper's DeepSeek-R1-Distill-Llama-8B (Llama 3.1 8B's shape): 32 layers, 4096 wide, 32
    # query heads, 8 KV heads of 128, SwiGLU of 14336, RoPE theta 500000 with Llama 3 scaling.
    "r1-llama-8b": GPTConfig(block_size=131072, vocab_size=128256, n_layer=32, n_head=32, n_kv_head=8,
                             n_embd=4096, mlp_hidden=14336, norm_eps=1e-5, rope_theta=500000.0,
                             rope_scaling=LLAMA3_ROPE_SCALING, tie_embeddings=False, **LLAMA_STYLE),
    # DeepSeek-R1-Distill-Qwen-1.5B (Qwen2): 28 layers, 1536 wide, 12 query heads, 2 KV heads of
    # 128, SwiGLU of 8960, biases on q/k/v, its own LM head.
    "r1-qwen-1.5b": GPTConfig(block_size=131072, vocab_size=151936, n_layer=28, n_head=12, n_kv_head=2,
                              n_embd=1536, mlp_hidden=8960, norm_eps=1e-6, rope_theta=10000.0, qkv_bias=True,
                              tie_embeddings=False, **LLAMA_STYLE),
}


# -----------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values of every layer, allocated once and written in place.

    `kv` holds all layers in one buffer, so that one index compacts them all. Only the first
    `length` slots are live. `pos[b, s]` is the position of the token in slot s of row b: after
    evictions the slots are no longer their positions. `seen` counts every token ever written,
    so the next token's position is `seen`, whatever `length` is. Every row holds the same
    number of slots and writes each new token at the same position (prompts of one length);
    after an eviction, rows differ in which positions they kept.
    """

    def __init__(self, config: GPTConfig, batch_size: int, capacity: int, device=None, dtype=None):
        self.capacity = capacity
        shape = (config.n_layer, 2, batch_size, config.n_kv_head, capacity, config.head_dim)
        self.kv = torch.zeros(shape, device=device, dtype=dtype)  # (n_layer, k|v, B, Hkv, capacity, D)
        self.pos = torch.zeros(batch_size, capacity, dtype=torch.long, device=device)  # (B, capacity)
        self.length = 0  # live slots
        self.seen = 0  # tokens written so far: the next token's position

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store this step's keys and values (B, Hkv, T, D) after the live slots and return the
        live keys and values including them (B, Hkv, S, D). Does not advance `length`."""
        end = self.length + k.shape[2]
        self.kv[layer, 0, :, :, self.length:end] = k
        self.kv[layer, 1, :, :, self.length:end] = v
        return self.kv[layer, 0, :, :, :end], self.kv[layer, 1, :, :, :end]

    def advance(self, n: int):
        """Make the n slots just written by every layer live; called once per forward."""
        self.pos[:, self.length:self.length + n] = torch.arange(self.seen, self.seen + n, device=self.pos.device)
        self.length += n
        self.seen += n

    def keep(self, idx: torch.Tensor, chunk: int = 32):
        """Compact every layer to the slots idx (B, n_keep), in place: row b's slot j takes slot
        idx[b, j]. Each row of idx is ascending, so idx[b, j] >= j.

        One index serves all layers and heads; each slot's position moves with it. An index
        (n_layer, B, Hkv, n_keep) instead keeps a set per layer, row and kv head, as the native
        baselines choose (every head keeps n_keep: the buffer stays rectangular); `pos` then
        follows layer 0's kv head 0, which is what the pictures show. The slots
        move `chunk` at a time, first to last: idx[j] >= j, so a chunk never overwrites a slot
        that a later chunk still reads. What is in flight is one chunk of slots, not a second
        copy of the kept cache (at the 8B shape, batch 8: 32 MiB, not 3 GB)."""
        n = idx.shape[-1]
        n_layer, _, B, Hkv, _, D = self.kv.shape
        per_head = idx.dim() == 4
        for a in range(0, n, chunk):
            src = idx[..., a:a + chunk]  # (B, c) or (n_layer, B, Hkv, c): the chunk's slots, all >= a
            c = src.shape[-1]
            src = src.view(n_layer, 1, B, Hkv, c, 1) if per_head else src.view(1, 1, B, 1, c, 1)
            self.kv[:, :, :, :, a:a + c] = self.kv.gather(4, src.expand(n_layer, 2, B, Hkv, c, D))
        self.pos[:, :n] = self.pos.gather(1, idx[0, :, 0] if per_head else idx)
        self.length = n

    def live_bytes(self, n: int | None = None) -> int:
        """Bytes of keys and values in n live slots (default: the live ones), what a decode step reads."""
        n = self.length if n is None else n
        return self.kv[:, :, :, :, :n].numel() * self.kv.element_size()

    def allocated_bytes(self) -> int:
        """Bytes of the whole buffer, live or not."""
        return self.kv.numel() * self.kv.element_size() + self.pos.numel() * self.pos.element_size()


# -----------------------------------------------------------------------------
# Rotary positions (the Llama family)


def rope_frequencies(config: GPTConfig) -> torch.Tensor:
    """RoPE's inverse frequencies (D/2,): theta^(-2i/D), float32 as Hugging Face computes them.

    Llama 3's scaling (Meta's Llama 3.1 code) divides the low frequencies, whose wavelength
    exceeds the original context / low_freq_factor, by `factor`; keeps the high ones, shorter
    than original / high_freq_factor; and blends linearly in between."""
    D = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, D, 2).float() / D))  # (D/2,)
    s = config.rope_scaling
    if s:
        old = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
        blended = (1 - smooth) * inv_freq / s["factor"] + smooth * inv_freq
        inv_freq = torch.where(wavelen > old / s["low_freq_factor"], inv_freq / s["factor"],
                               torch.where(wavelen < old / s["high_freq_factor"], inv_freq, blended))
    return inv_freq


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, T, D) by its tokens' angles, cos and sin (1 or B, 1, T, D/2): dimension i
    and i + D/2 form a pair (Hugging Face's rotate_half layout, so its q/k weights load as they
    are). The product is taken in float32, then cast back."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, heads, T, D/2) each
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


# -----------------------------------------------------------------------------
# The transformer


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer  # which slice of the KV cache is ours
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        kv_dim = config.n_kv_head * config.head_dim
        self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * kv_dim, bias=config.bias or config.qkv_bias)  # q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x, cache: KVCache | None = None, need_attention: bool = False, mask=None, rope=None):
        B, T, C = x.shape
        kv_dim = self.n_kv_head * self.head_dim
        q, k, v = self.c_attn(x).split([C, kv_dim, kv_dim], dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        if rope is not None:
            # RoPE under eviction: each key is rotated once, at its own absolute position, before
            # it is cached. A compaction moves rotated keys between slots and never re-rotates
            # them; the query is rotated at its position, cache.seen. Their dot product depends
            # only on the distance between the two positions, wherever the key's slot now is.
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.write(self.layer, k, v)  # (B, Hkv, S, D): the live slots, this step's last
        S = k.shape[2]
        # Query i (of T) sits at slot S - T + i and sees every slot up to its own: all cached
        # slots are older than this step's tokens, whatever evictions did to them. A decode step
        # (T == 1) sees everything; a prefill of an empty cache (S == T) is plain causal.
        if mask is not None:  # training under simulated eviction
            mask = mask[:, None]  # (B, 1, T, S)
        elif T > 1 and (S > T or need_attention):
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)  # (T, S)
        if need_attention:  # the policy reads the attention: materialize the probabilities
            y, probs = attention_with_probs(q, k, v, mask)
            # (B, Hkv, S): summed over queries, averaged over the query heads that read each kv head
            attention = probs.sum(dim=2).view(B, self.n_kv_head, -1, S).mean(dim=2)
        elif T == 1 and x.is_cuda:
            # A decode step on a GPU: plain attention. SDPA's default dispatch pays tens of ms there
            # for each length it has not seen, and a decode step's is always new (docs/PERF_NOTES.md).
            y = attention_with_probs(q, k, v)[0]
            attention = None
        elif T == 1:
            # A decode step on the CPU: SDPA, the `group` query heads of a kv head as its `group`
            # queries, so nothing copies the cache per query head. (The plain path's scores grow by a
            # slot a step, and the C heap fragments under them: gigabytes of memory by 6,000 steps.)
            group = self.n_head // self.n_kv_head
            y = F.scaled_dot_product_attention(q.reshape(B, self.n_kv_head, group, self.head_dim), k, v)
            y = y.reshape(B, self.n_head, 1, self.head_dim)
            attention = None
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
            attention = None
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y), attention


def attention_with_probs(q, k, v, mask=None):
    """Plain softmax attention that also returns the probabilities (B, H, T, S). Query head h
    reads key/value head h // group (GQA): the group's queries are stacked, (B, Hkv, group * T,
    D), so the keys and values are read as they are, not copied once per query head."""
    (B, H, T, D), (Hkv, S) = q.shape, k.shape[1:3]
    group = H // Hkv
    scores = (q.reshape(B, Hkv, group * T, D) @ k.transpose(-2, -1)).view(B, H, T, S) / math.sqrt(D)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.float().softmax(dim=-1).to(q.dtype)  # (B, H, T, S)
    y = probs.view(B, Hkv, group * T, S) @ v  # (B, Hkv, group * T, D)
    return y.view(B, H, T, D), probs


class MLP(nn.Module):
    """GPT-2: c_proj(gelu(c_fc(x))). SwiGLU (Llama, Qwen2): c_proj(silu(c_gate(x)) * c_fc(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)  # "up" in Llama
        self.c_gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias) if config.mlp == "swiglu" else None
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)  # "down" in Llama

    def forward(self, x):
        if self.c_gate is None:
            return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))
        return self.c_proj(F.silu(self.c_gate(x)) * self.c_fc(x))


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without the mean and the bias. In float32,
    then cast back, as Hugging Face's Llama does."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class Block(nn.Module):
    """Pre-norm: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, need_attention=False, mask=None, rope=None):
        a, attention = self.attn(self.ln_1(x), cache, need_attention, mask, rope)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, attention


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
        if config.positions == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)  # learned absolute positions
        else:  # RoPE: nothing to learn; the frequencies are a buffer (not saved: derived from the config)
            self.register_buffer("inv_freq", rope_frequencies(config), persistent=False)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = make_norm(config)
        # The LM head: wte's weights (tied), or a matrix of its own.
        self.head = None if config.tie_embeddings else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections by depth
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from final hidden states (..., C) -> (..., vocab)."""
        return hidden @ (self.wte.weight if self.head is None else self.head.weight).T

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, need_attention: bool = False,
                mask: torch.Tensor | None = None):
        """Run T new tokens idx (B, T).

        Without a cache this is the plain causal forward over positions 0..T-1 (training, and
        the reference the tests compare against). With a cache, the tokens take positions
        cache.seen.. and attend to every live slot; T > 1 is a prefill, T == 1 a decode step.
        `mask` (B, T, T) bool, without a cache only, replaces the causal mask: which tokens each
        query sees (lab/train.py uses it to simulate evictions).

        Returns the logits of the last position (B, vocab), the final hidden states (B, T, C)
        and, only when need_attention, the attention each live slot received (n_layer, B,
        n_kv_head, S): summed over this step's queries, averaged over the query heads of each kv
        head. Its mean over layers and kv heads (B, S) is what a selection shared by every layer
        and head ranks by; the native baselines (lab/policies.py) rank each head by its own.
        """
        B, T = idx.shape
        if mask is not None and cache is not None:
            raise ValueError("a custom attention mask is for the uncached forward only")
        start = cache.seen if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        if cache is not None and cache.length + T > cache.capacity:
            raise ValueError(f"KV cache overflow: {cache.length} live + {T} new > capacity {cache.capacity}")
        pos = torch.arange(start, start + T, device=idx.device)  # (T,): the new tokens' positions
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.config.positions == "learned":
            x = x + self.wpe(pos)
        else:  # every layer rotates q and k by these angles
            angles = pos[None, None, :, None].float() * self.inv_freq  # (1, 1, T, D/2)
            rope = angles.cos(), angles.sin()
        attention = []  # per layer, only when need_attention
        for block in self.blocks:
            x, a = block(x, cache, need_attention, mask, rope)
            if need_attention:
                attention.append(a)
        if cache is not None:
            cache.advance(T)  # the one place the cache grows
        hidden = self.ln_f(x)  # (B, T, C): the LM head's input, and the importance predictor's
        logits = self.lm_head(hidden[:, -1])  # (B, vocab)
        return logits, hidden, torch.stack(attention) if need_attention else None  # (n_layer, B, Hkv, S)
