"""The speed layer: a decode step replayed as one CUDA graph (`--cuda-graphs`).

The plain path is GPT.forward (model.py), and it stays the reference: this module reads the
model's weights and modules and computes what GPT.forward computes for one token per row, for
both block families (GPT-2: LayerNorm, GELU, learned positions; Llama / Qwen2: RMSNorm, SwiGLU,
RoPE, q/k/v biases, an untied head). model.py knows nothing of it; generate.generate uses it
when asked (`--cuda-graphs` of generate.py, eval.py and profile.py). The tests run each step eagerly (`capture=False`)
against GPT.forward, and the Triton kernels on the CPU in Triton's interpreter.

Why CUDA graphs: GPT.forward launches ~14 kernels a layer from Python, ~450 a step. At batch 8
most of them are tiny, and Python launches them slower than the GPU runs them: eager decoding
of the 8B shape reached 11-23% of the memory roofline on an H100 (docs/PERF_NOTES.md). A CUDA graph
launches a whole recorded step at once (80-86% there).

A graph replays fixed arguments, so what changes from step to step lives in device tensors:
the new token, its position and its cache slot. Attention is a split-KV ("flash-decoding")
kernel that reads the live length from the device, so one graph serves every cache length and
reads only the live slots. At batch 8 each small kernel costs ~2-3 us whatever its size, so a
few fusions:
- the attention kernel writes the token's K and V into the cache and, with RoPE, rotates q and
  the new k first (at the token's position, from angles computed once a step for all layers);
- each residual add is fused with the norm after it (LayerNorm or RMSNorm);
- GPT-2's GELU runs in its GEMM's epilogue; SwiGLU's silu(gate) * up is one kernel.
Everything else is the model's own modules (the Linear layers, the embedding, the LM head), in
GPT.forward's order. Evictions compact the cache in place (`keep_in_place`: nothing in flight),
so the captured buffers stay valid.

Limits: one token per row, no attention weights (policies that score by attention run without
graphs), no ragged batch (left padding's empty slots are not masked here), head_dim a power of
two. The kernels run on CUDA with Triton; without Triton (or on the CPU) each falls back to
eager PyTorch, which is also what the tests compare the kernels against.
"""

import functools
import math
import os

import torch
import torch.nn.functional as F

import dynts
from model import GPT, KVCache, RMSNorm, apply_rope

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
# The attention kernel's settings, measured on an H100 (docs/PERF_NOTES.md, 2026-11-27): a program reads
# CHUNK slots of one (row, kv head), BLOCK_N at a time, loads pipelined NUM_STAGES deep. Once a
# step has MANY_PAIRS (row, kv head) pairs or more there are programs enough to fill the GPU with
# longer chunks, which read at 97-99% of the copy bandwidth (at batch 30 and 94 of r1-llama-8b);
# with fewer pairs (batch 8: 64) shorter chunks make more programs.
CHUNK, BLOCK_N = 512, 64  # slots per program (a split of the split-KV scheme), and per iteration in it
CHUNK_MANY, BLOCK_N_MANY, MANY_PAIRS = 1024, 128, 128
NUM_WARPS, NUM_STAGES = 4, 2


def split_settings(pairs: int, head_dim: int, elt: int, device: torch.device) -> tuple[int, int]:
    """(chunk, block_n) for a step of `pairs` = batch x kv heads: the long chunks where there are
    enough pairs and the GPU's shared memory holds their pipelined K and V blocks."""
    # Shared memory holds the K and V blocks of the stages in flight ahead of the one computed, and a little more:
    # measured on an H100, 72 KiB a program in all at bf16 and head_dim 128 (76 KiB at float32 and 64).
    smem = (NUM_STAGES - 1) * 2 * BLOCK_N_MANY * head_dim * elt + 2**14
    if device.type == "cuda" and smem > getattr(torch.cuda.get_device_properties(device),
                                                "shared_memory_per_block_optin", 0):
        return CHUNK, BLOCK_N
    return (CHUNK_MANY, BLOCK_N_MANY) if pairs >= MANY_PAIRS else (CHUNK, BLOCK_N)


def use_triton(t: torch.Tensor) -> bool:
    """The kernels below run on CUDA, or on the CPU in Triton's interpreter (TRITON_INTERPRET=1, for tests)."""
    return triton is not None and (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def capture(model: GPT, cache: KVCache, policy: dynts.Policy):
    """generate.step's forward and scoring for one token a row, each replayed as a CUDA graph
    (`(forward, observe)`, generate.step's `graphs`); the policy's scoring runs eagerly where it
    cannot be captured. The cache's compaction becomes `keep_in_place`: the graphs hold its
    buffers, and nothing is in flight. On the CPU the same steps run eagerly (for tests)."""
    live = cache.kv.device.type == "cuda"
    forward = GraphedDecode(model, cache, capture=live)
    observe = GraphedObserve(policy, forward, capture=live) \
        if type(policy).observe is dynts.Policy.observe and policy.graph_safe else policy.observe
    cache.keep = functools.partial(keep_in_place, cache)
    return forward, observe


class GraphedDecode:
    """Callable like the model for one decode token: (idx (B, 1), cache) -> (logits, hidden, None).

    `capture=False` runs the same step eagerly (for tests on machines without CUDA)."""

    def __init__(self, model: GPT, cache: KVCache, capture: bool = True, chunk: int | None = None):
        cfg, dev = model.config, cache.kv.device
        if use_triton(cache.kv) and (cfg.head_dim & (cfg.head_dim - 1) or cfg.head_dim < 16):
            raise ValueError(f"the attention kernel needs a power-of-two head_dim >= 16, not {cfg.head_dim}")
        B = cache.kv.shape[2]
        self.chunk, self.block_n = split_settings(B * cfg.n_kv_head, cfg.head_dim, cache.kv.element_size(), dev) \
            if chunk is None else (chunk, min(BLOCK_N, chunk))  # (a test's chunk)
        self.model, self.cache = model, cache
        self.token = torch.zeros(B, 1, dtype=torch.long, device=dev)  # the step's input
        self.slot = torch.zeros(1, dtype=torch.long, device=dev)  # where its K, V go: cache.length
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)  # its absolute slot count: cache.seen
        n_splits = -(-cache.capacity // self.chunk)
        self.partial = (torch.empty(B * cfg.n_head * n_splits, cfg.head_dim, dtype=torch.float32, device=dev),  # outputs
                        torch.empty(B * cfg.n_head * n_splits, 2, dtype=torch.float32, device=dev))  # max, sum of exp
        no_bias = torch.zeros(cfg.mlp_hidden, dtype=model.wte.weight.dtype, device=dev)  # the GELU epilogue needs one
        self.fc_bias = [b.mlp.c_fc.bias if b.mlp.c_fc.bias is not None else no_bias for b in model.blocks]
        self.graph = None
        if capture:
            self.token.fill_(0), self.slot.fill_(cache.length), self.pos.fill_(cache.seen)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up: compiles the kernels, writes only the free slot
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits, self.hidden = self._step()

    def __call__(self, idx: torch.Tensor, cache: KVCache, need_attention: bool = False):
        if cache is not self.cache or idx.shape != self.token.shape or need_attention:
            raise ValueError("GraphedDecode runs one token per row, without attention weights, on its own cache")
        if cache.seen + 1 > self.model.config.block_size or cache.length + 1 > cache.capacity:
            raise ValueError(f"no room for another token: {cache.seen} seen, {cache.length} of {cache.capacity} live")
        self.token.copy_(idx)
        self.slot.fill_(cache.length)
        self.pos.fill_(cache.seen)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.logits, self.hidden = self._step()
        cache.advance(1)
        return self.logits, self.hidden, None

    @torch.no_grad()
    def _step(self):
        """GPT.forward for one token, with the slot and position read from device tensors (no host
        sync, no branch on a device value: the graph replays this as recorded)."""
        m, kv = self.model, self.cache.kv
        cfg = m.config
        B, C, H, Hkv, D = self.token.shape[0], cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim
        pos = self.pos.expand(B)  # (B,): every row's position, as GPT.forward's
        x = m.wte(self.token)  # (B, 1, C): the residual stream, updated in place below
        rope = None
        if cfg.positions == "learned":
            x = x + m.wpe(pos)[:, None]  # (B, 1, C)
        else:  # GPT.forward's angles; the attention kernel rotates q and the new k by them
            angles = pos[:, None].float() * m.inv_freq  # (B, D/2)
            rope = angles.cos(), angles.sin()
        n_live = self.slot + 1  # (1,): the live slots, this token's included
        h = m.blocks[0].ln_1(x)
        norms_after = [b.ln_1 for b in m.blocks[1:]] + [m.ln_f]  # the norm after each block
        for block, next_norm in zip(m.blocks, norms_after):
            layer = block.attn.layer
            qkv = block.attn.c_attn(h)[:, 0]  # (B, C + 2 Hkv D): q, then the new token's k and v (biases included)
            q, k_new, v_new = qkv[:, :C].view(B, H, D), qkv[:, C:C + Hkv * D], qkv[:, C + Hkv * D:]
            y = decode_attention(q, k_new.view(B, Hkv, D), v_new.view(B, Hkv, D), kv[layer, 0], kv[layer, 1], n_live,
                                 self.partial, rope, self.chunk, self.block_n)  # (B, H, D); writes k_new, v_new too
            h = add_norm(x, block.attn.c_proj(y.reshape(B, 1, C)), block.ln_2)  # x += attn; h = ln_2(x)
            h = add_norm(x, mlp_forward(block.mlp, h, self.fc_bias[layer]), next_norm)  # x += mlp; h = norm(x)
        hidden = h  # (B, 1, C): ln_f of the residual stream
        return m.lm_head(hidden[:, -1]), hidden


class GraphedObserve:
    """Policy.observe for the token GraphedDecode just ran: the policy's `score` (the predictor,
    for DynTS) captured as a second graph, replayed right after the step's, and written into the
    policy's scores at the token's slot. Only for policies that keep dynts.Policy.observe.
    `capture=False` runs the same eagerly (for tests)."""

    def __init__(self, policy: dynts.Policy, decode: GraphedDecode, capture: bool = True):
        if type(policy).observe is not dynts.Policy.observe:
            raise ValueError(f"--cuda-graphs: policy {policy.name!r} has its own observe(); run it without graphs")
        self.policy, self.decode, self.graph = policy, decode, None
        if not capture:
            return
        state = {k: v.clone() for k, v in vars(policy).items() if torch.is_tensor(v)}  # warm-up must not change it
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._observe()
        torch.cuda.current_stream().wait_stream(side)
        for k, v in state.items():
            getattr(policy, k).copy_(v)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._observe()

    @torch.no_grad()
    def _observe(self):
        d = self.decode  # its token, hidden state and position (the slot's absolute position)
        self.policy.scores.index_copy_(1, d.slot, self.policy.score(d.token, d.hidden, d.pos).float())
        self.policy.positions.index_copy_(1, d.slot, d.pos.expand(d.token.shape))

    def __call__(self, tokens, hidden, positions, attention=None):
        if hidden is not self.decode.hidden:
            raise ValueError("GraphedObserve scores the token that its GraphedDecode just ran")
        if self.graph is not None:
            self.graph.replay()
        else:
            self._observe()
        self.policy.length += 1


# -----------------------------------------------------------------------------
# The step's pieces: each a Triton kernel (or a cuBLASLt epilogue) on CUDA, eager PyTorch otherwise


def add_norm(x, a, norm):
    """x += a in place (the residual stream), then return norm(x), a LayerNorm or an RMSNorm: one
    kernel with Triton, with the norm's own float32 math and roundings."""
    if not use_triton(x):
        x += a
        return norm(x)
    assert x.is_contiguous() and a.is_contiguous() and a.shape == x.shape
    C = x.shape[-1]
    h = torch.empty_like(x)
    bias = getattr(norm, "bias", None)  # (RMSNorm has none)
    _add_norm_kernel[(x.numel() // C,)](x, a, norm.weight, norm.weight if bias is None else bias, h, C, norm.eps,
                                        RMS=isinstance(norm, RMSNorm), HAS_BIAS=bias is not None,
                                        BLOCK_C=triton.next_power_of_2(C), num_warps=8)
    return h


def mlp_forward(mlp, h, fc_bias):
    """MLP.forward, with fewer kernels. GELU (on CUDA): the GELU in the first GEMM's epilogue
    (cuBLASLt's GELU is the tanh approximation, as the model's); fc_bias: c_fc's bias, or zeros.
    SwiGLU (with Triton): c_proj(silu(c_gate(h)) * c_fc(h)), the silu and the product one kernel."""
    if mlp.c_gate is not None:
        if not use_triton(h):
            return mlp(h)
        g, u = mlp.c_gate(h), mlp.c_fc(h)  # (B, 1, hidden) each
        a = torch.empty_like(g)
        _silu_mul_kernel[(triton.cdiv(g.numel(), 1024),)](g, u, a, g.numel(), BLOCK=1024)
        return mlp.c_proj(a)
    if not h.is_cuda:
        return mlp(h)
    a = torch._addmm_activation(fc_bias, h.reshape(-1, h.shape[-1]), mlp.c_fc.weight.t(), use_gelu=True)
    return mlp.c_proj(a).view(h.shape)


def decode_attention(q, k_new, v_new, k, v, n_live, partial, rope=None, chunk=CHUNK, block_n=BLOCK_N):
    """Write the new token's k_new, v_new (B, Hkv, D) at slot n_live - 1 of k, v (B, Hkv, cap, D),
    then attend with one query per head q (B, H, D) to the first n_live slots; n_live is a (1,)
    device tensor; query head h reads kv head h // (H / Hkv), as SDPA's enable_gqa.
    `rope`: None, or (cos, sin) (B, D/2) float32, the angles of each row's position: q and k_new
    are rotated (model.apply_rope) before anything else, so the cache holds the rotated key,
    written once and never rotated again (as in GPT.forward).
    `partial` holds the splits' results: (outputs (B * H * n_splits, D), (max, sum) (B * H * n_splits, 2)).
    Returns (B, H, D). On CUDA with Triton: split-KV kernels that read only the live slots, and
    whose loop over a chunk stops at its last live block (the newest chunk is nearly empty after
    each crossing; looping over all of it cost DynTS 0.4 ms a step at 94 rows on an H100,
    docs/PERF_NOTES.md, 2026-11-27). In Triton's CPU interpreter the loop runs over the whole chunk, masked,
    which computes the same: the interpreter cannot take a loop bound read from memory (its
    scalars are 1-element arrays, which NumPy 2.4 and later will not turn into ints). Otherwise index_copy_
    and plain masked SDPA over the whole buffer (a reference, for tests)."""
    B, H, D = q.shape
    Hkv, cap = k.shape[1], k.shape[2]
    if use_triton(q):
        assert q.stride(2) == 1 and q.stride(1) == D and k.stride() == v.stride() and k.stride(3) == 1
        assert k_new.stride() == v_new.stride() and k_new.stride(1) == D and k_new.stride(2) == 1
        cos, sin = rope if rope is not None else (q, q)  # (not read without RoPE)
        assert rope is None or (cos.is_contiguous() and sin.is_contiguous() and cos.shape == (B, D // 2))
        n_splits = triton.cdiv(cap, chunk)
        out = torch.empty(B, H, D, dtype=q.dtype, device=q.device)
        _attn_split_kernel[(B * Hkv, n_splits)](
            q, k_new, v_new, k, v, n_live, cos, sin, *partial, q.stride(0), k_new.stride(0), k.stride(0), k.stride(1),
            k.stride(2), n_splits, 1 / math.sqrt(D),
            HKV=Hkv, G=H // Hkv, BLOCK_G=max(16, triton.next_power_of_2(H // Hkv)), D=D, CHUNK=chunk,
            BLOCK_N=min(block_n, chunk), ROPE=rope is not None, LIVE_ONLY=q.is_cuda, num_warps=NUM_WARPS,
            num_stages=NUM_STAGES)
        _attn_combine_kernel[(B * H,)](*partial, n_live, out, n_splits, CHUNK=chunk,
                                       BLOCK_S=triton.next_power_of_2(n_splits), D=D)
        return out
    if rope is not None:  # apply_rope takes (B, heads, T, D) and angles (B, 1, T, D/2)
        cos, sin = (t[:, None, None] for t in rope)
        q, k_new = apply_rope(q.unsqueeze(2), cos, sin).squeeze(2), apply_rope(k_new.unsqueeze(2), cos, sin).squeeze(2)
    k.index_copy_(2, n_live - 1, k_new.unsqueeze(2)), v.index_copy_(2, n_live - 1, v_new.unsqueeze(2))
    live = (torch.arange(cap, device=q.device) < n_live).view(1, 1, 1, cap)  # (1, 1, 1, cap)
    y = F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=live, enable_gqa=True)  # (B, H, 1, D)
    return y.squeeze(2)  # (B, H, D)


def keep_in_place(cache: KVCache, idx: torch.Tensor):
    """KVCache.keep(idx) with no copy in flight: on CUDA with Triton, one program per (layer,
    k|v, row, kv head) moves slot idx[row, j] to slot j, a block of slots at a time, through
    registers. Rows of idx are sorted, so idx[j] >= j: a block's stores never hit a later
    block's sources, and a barrier between a block's loads and its stores covers its own.
    The cache never holds more than its buffers (KVCache.keep holds a 32-slot chunk)."""
    if not use_triton(cache.kv):
        return KVCache.keep(cache, idx)
    L, _, B, Hkv, cap, D = cache.kv.shape
    assert cache.kv.is_contiguous() and idx.is_contiguous() and idx.shape[0] == B
    n = idx.shape[1]
    _compact_kernel[(L * 2 * B * Hkv,)](cache.kv, idx, n, B=B, HKV=Hkv, CAP=cap, D=D, BLOCK=64)
    cache.pos[:, :n] = cache.pos.gather(1, idx)
    cache.length = n


# -----------------------------------------------------------------------------
# The Triton kernels

if triton is not None:

    @triton.jit
    def _compact_kernel(kv_ptr, idx_ptr, n_keep, B: tl.constexpr, HKV: tl.constexpr, CAP: tl.constexpr,
                        D: tl.constexpr, BLOCK: tl.constexpr):
        """One program: the CAP x D slots of one (layer, k|v, row, kv head); slot idx[row, j] -> j."""
        p = tl.program_id(0)  # ((layer * 2 + k|v) * B + row) * HKV + kv head: the buffer's order
        row = (p // HKV) % B
        base = kv_ptr + p.to(tl.int64) * CAP * D  # 64-bit: the whole buffer can exceed 2**31 elements
        d = tl.arange(0, D)
        for j0 in range(0, CAP, BLOCK):  # in order; the blocks past n_keep do nothing
            if j0 < n_keep:
                j = j0 + tl.arange(0, BLOCK)
                valid = j < n_keep
                src = tl.load(idx_ptr + row * n_keep + j, mask=valid, other=0)
                x = tl.load(base + src[:, None] * D + d[None, :], mask=valid[:, None])
                tl.debug_barrier()  # every source of this block is read before any slot of it is written
                tl.store(base + j[:, None] * D + d[None, :], x, mask=valid[:, None])

    @triton.jit
    def _rope(x, x_pair, cos_ptr, sin_ptr, row, D: tl.constexpr):
        """model.apply_rope on loaded vectors x (..., D) of one row: dimension d pairs with
        x_pair[d] = x[(d + D/2) % D]; out = x cos - x_pair sin below D/2, x cos + x_pair sin
        from D/2. In float32, cast back to x's dtype."""
        d = tl.arange(0, D)
        i = row * (D // 2) + d % (D // 2)  # the (row, frequency) of dimension d
        sin = tl.load(sin_ptr + i) * tl.where(d < D // 2, -1.0, 1.0)
        return (x.to(tl.float32) * tl.load(cos_ptr + i) + x_pair.to(tl.float32) * sin).to(x.dtype)

    @triton.jit
    def _attn_split_kernel(q_ptr, k_new_ptr, v_new_ptr, k_ptr, v_ptr, n_live_ptr, cos_ptr, sin_ptr, o_ptr, ml_ptr,
                           stride_qb, stride_nb, stride_kb, stride_kh, stride_ks, n_splits, scale, HKV: tl.constexpr,
                           G: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr, CHUNK: tl.constexpr,
                           BLOCK_N: tl.constexpr, ROPE: tl.constexpr, LIVE_ONLY: tl.constexpr):
        """One program: the G query heads of one kv head of one row, over CHUNK slots. Writes the
        unnormalized output, the running max and the sum of exponentials (online softmax). The
        program whose chunk holds the new token's slot first writes its K (rotated, with RoPE)
        and V there; every program rotates its queries."""
        bh, split = tl.program_id(0), tl.program_id(1)  # bh = row * HKV + kv head
        row = bh // HKV
        n_live = tl.load(n_live_ptr)
        start = split * CHUNK
        d = tl.arange(0, D)
        pair = (d + D // 2) % D  # RoPE's partner of each dimension
        base = row * stride_kb + (bh % HKV) * stride_kh
        if (start < n_live) & (n_live <= start + CHUNK):  # the new token's slot, n_live - 1, is in this chunk
            new = row * stride_nb + (bh % HKV) * D
            k_new = tl.load(k_new_ptr + new + d)
            if ROPE:
                k_new = _rope(k_new, tl.load(k_new_ptr + new + pair), cos_ptr, sin_ptr, row, D)
            tl.store(k_ptr + base + (n_live - 1) * stride_ks + d, k_new)
            tl.store(v_ptr + base + (n_live - 1) * stride_ks + d, tl.load(v_new_ptr + new + d))
            tl.debug_barrier()  # the whole program sees them before reading the chunk
        if start < n_live:  # programs past the live slots do nothing
            g = tl.arange(0, BLOCK_G)
            rows = bh * G + g  # (row, query head) of the G heads, as row * H + head: H = HKV * G
            q_row = row * stride_qb + ((bh % HKV) * G + g[:, None]) * D  # (BLOCK_G, 1)
            q = tl.load(q_ptr + q_row + d[None, :], mask=g[:, None] < G, other=0.0)  # (BLOCK_G, D)
            if ROPE:
                q = _rope(q, tl.load(q_ptr + q_row + pair[None, :], mask=g[:, None] < G, other=0.0), cos_ptr, sin_ptr,
                          row, D)
            m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_G], tl.float32)
            acc = tl.zeros([BLOCK_G, D], tl.float32)
            # (LIVE_ONLY: see decode_attention; the bound is written in place, as a variable holding it
            # would be a tensor in the interpreter even when it is CHUNK)
            for n0 in range(0, tl.minimum(n_live - start, CHUNK) if LIVE_ONLY else CHUNK, BLOCK_N):
                s_idx = start + n0 + tl.arange(0, BLOCK_N)
                valid = s_idx < n_live
                offs = base + s_idx[:, None] * stride_ks + d[None, :]
                k = tl.load(k_ptr + offs, mask=valid[:, None], other=0.0)  # (BLOCK_N, D)
                s = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_G, BLOCK_N)
                s = tl.where(valid[None, :], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                alpha = tl.exp(m_i - m_new)
                p = tl.exp(s - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                v = tl.load(v_ptr + offs, mask=valid[:, None], other=0.0)  # (BLOCK_N, D)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
                m_i = m_new
            out = rows * n_splits + split  # the partial buffers' row
            tl.store(o_ptr + out[:, None] * D + d[None, :], acc, mask=g[:, None] < G)
            tl.store(ml_ptr + out * 2, m_i, mask=g < G)
            tl.store(ml_ptr + out * 2 + 1, l_i, mask=g < G)

    @triton.jit
    def _attn_combine_kernel(o_ptr, ml_ptr, n_live_ptr, out_ptr, n_splits, CHUNK: tl.constexpr, BLOCK_S: tl.constexpr,
                             D: tl.constexpr):
        """One program per (row, query head): merge the live splits' partial softmaxes."""
        row = tl.program_id(0)
        n_used = tl.cdiv(tl.load(n_live_ptr), CHUNK)
        s, d = tl.arange(0, BLOCK_S), tl.arange(0, D)
        used = s < n_used
        split_row = row * n_splits + s
        m = tl.load(ml_ptr + split_row * 2, mask=used, other=float("-inf"))
        l = tl.load(ml_ptr + split_row * 2 + 1, mask=used, other=0.0)
        w = tl.exp(m - tl.max(m, 0))  # unused splits weigh 0
        o = tl.load(o_ptr + split_row[:, None] * D + d[None, :], mask=used[:, None], other=0.0)  # (BLOCK_S, D)
        y = tl.sum(o * w[:, None], 0) / tl.sum(l * w, 0)
        tl.store(out_ptr + row * D + d, y.to(out_ptr.dtype.element_ty))

    @triton.jit
    def _add_norm_kernel(x_ptr, a_ptr, w_ptr, b_ptr, h_ptr, C, eps, RMS: tl.constexpr, HAS_BIAS: tl.constexpr,
                         BLOCK_C: tl.constexpr):
        """One program per row of C: x += a, rounded to x's dtype as the eager add is; then h =
        LayerNorm(x) (float32 throughout, as nn.LayerNorm) or RMSNorm(x) (model.RMSNorm: the
        normalized x cast to x's dtype, then times the weight)."""
        row = tl.program_id(0)
        c = tl.arange(0, BLOCK_C)
        mask = c < C
        x = tl.load(x_ptr + row * C + c, mask=mask, other=0.0).to(tl.float32)
        x = (x + tl.load(a_ptr + row * C + c, mask=mask, other=0.0).to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(x_ptr + row * C + c, x, mask=mask)
        x = x.to(tl.float32)
        w = tl.load(w_ptr + c, mask=mask, other=0.0).to(tl.float32)
        if RMS:
            h = (x * tl.rsqrt(tl.sum(x * x, 0) / C + eps)).to(h_ptr.dtype.element_ty).to(tl.float32) * w
        else:
            xc = tl.where(mask, x - tl.sum(x, 0) / C, 0.0)
            h = xc * tl.rsqrt(tl.sum(xc * xc, 0) / C + eps) * w
        if HAS_BIAS:
            h += tl.load(b_ptr + c, mask=mask, other=0.0).to(tl.float32)
        tl.store(h_ptr + row * C + c, h.to(h_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _silu_mul_kernel(g_ptr, u_ptr, out_ptr, n, BLOCK: tl.constexpr):
        """silu(g) * u, elementwise, each op rounded to the dtype as eager F.silu(g) * u is."""
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = i < n
        g = tl.load(g_ptr + i, mask=mask, other=0.0).to(tl.float32)
        s = (g * tl.sigmoid(g)).to(out_ptr.dtype.element_ty).to(tl.float32)
        u = tl.load(u_ptr + i, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + i, (s * u).to(out_ptr.dtype.element_ty), mask=mask)
