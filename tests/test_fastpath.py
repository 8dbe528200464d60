"""fastpath.py: the --cuda-graphs step against GPT.forward, for both block families, run eagerly
on the CPU (capture=False), and its Triton kernels in Triton's CPU interpreter."""

import dataclasses
import os
import subprocess
import sys

import pytest
torch = pytest.importorskip("torch")

import dynts
from lab import fastpath
from model import GPT, PRESETS, GPTConfig, KVCache, apply_rope, rope_frequencies

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# GPT-2's blocks (LayerNorm, GELU, learned positions, tied head), GQA; the Llama family's (RMSNorm,
# SwiGLU, RoPE with Llama 3's scaling, its original context shrunk so that all three frequency
# bands occur, GQA, untied head); Qwen2's (biases on q, k, v only, one KV head). head_dim 16: the
# smallest the attention kernel's tl.dot takes on a GPU.
LLAMA_STYLE = dict(bias=False, norm="rmsnorm", mlp="swiglu", positions="rope", tie_embeddings=False)
CONFIGS = dict(
    gpt2=PRESETS["tiny"],
    llama=GPTConfig(block_size=256, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, mlp_hidden=96, rope_theta=500.0,
                    rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                      original_max_position_embeddings=64), **LLAMA_STYLE),
    qwen2=GPTConfig(block_size=256, n_layer=2, n_head=4, n_kv_head=1, n_embd=64, mlp_hidden=96, norm_eps=1e-6,
                    qkv_bias=True, **LLAMA_STYLE),
)


def sharp_model(cfg, seed=0):
    """A random model whose attention matters: weights x 4 (at GPT-2's init a random model attends
    almost uniformly, and a wrong position would barely move the logits), and random biases and
    norm weights (their init, 0 and 1, would hide a bias or a weight left out)."""
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4) if p.ndim == 2 else p.add_(torch.randn_like(p) * 0.2)
    return model


@torch.no_grad()
def check_graphed_step(cfg, steps=24, evict_at=12, chunk=16, B=3, device="cpu", capture=False, tol=1e-4,
                       prompt_len=37, capacity=80):
    """The --cuda-graphs step, run eagerly (no capture) or as captured CUDA graphs, against
    GPT.forward, across an eviction: the logits, the final hidden states, the cache's positions and
    its keys and values (cached once, RoPE's rotated at their own positions, never rotated again).
    chunk=None: the attention kernel's own settings for the batch. Returns the step."""
    model = sharp_model(cfg).to(device)
    prompt = torch.randint(0, 256, (B, prompt_len), device=device)
    plain, fast = KVCache(cfg, B, capacity, device=device), KVCache(cfg, B, capacity, device=device)
    model(prompt, plain), model(prompt, fast)
    step = fastpath.GraphedDecode(model, fast, capture=capture, chunk=chunk)
    token = torch.randint(0, 256, (B, 1), device=device)
    for i in range(steps):
        logits, hidden, _ = model(token, plain)
        logits_fast, hidden_fast, _ = step(token, fast)
        torch.testing.assert_close(logits_fast, logits, atol=tol, rtol=tol)
        torch.testing.assert_close(hidden_fast, hidden, atol=tol, rtol=tol)
        assert (fast.length, fast.seen) == (plain.length, plain.seen)
        assert torch.equal(fast.pos[:, :fast.length], plain.pos[:, :plain.length])
        torch.testing.assert_close(fast.kv[:, :, :, :, :fast.length], plain.kv[:, :, :, :, :plain.length],
                                   atol=tol / 10, rtol=tol / 10)
        if i == evict_at:  # the same eviction in both: slots no longer match positions from here on
            idx = torch.stack([torch.randperm(plain.length)[:30].sort().values for _ in range(B)]).to(device)
            plain.keep(idx), fastpath.keep_in_place(fast, idx)
        token = logits.argmax(dim=-1, keepdim=True)
    return step


@pytest.mark.parametrize("name", list(CONFIGS))
def test_graphed_step_matches_gpt_forward_across_an_eviction(name):
    check_graphed_step(CONFIGS[name])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_captured_step_on_cuda_matches_gpt_forward(name):
    """The same, on a GPU: the step captured as CUDA graphs and replayed, its Triton kernels
    compiled (float32; the kernels' dot products round like TF32, hence the tolerance)."""
    check_graphed_step(CONFIGS[name], device="cuda", capture=True, tol=2e-2)


def test_attention_settings_by_batch():
    """Long chunks once a step has MANY_PAIRS (row, kv head) pairs, and where the GPU's shared
    memory holds their pipelined blocks; shorter ones otherwise (r1-llama-8b: 8 kv heads)."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    few, many = (fastpath.CHUNK, fastpath.BLOCK_N), (fastpath.CHUNK_MANY, fastpath.BLOCK_N_MANY)
    assert fastpath.split_settings(8 * 8, 128, 2, cpu) == few  # batch 8
    assert fastpath.split_settings(16 * 8, 128, 2, cpu) == fastpath.split_settings(94 * 8, 128, 2, cpu) == many
    props = lambda kib: lambda device: type("Props", (), dict(shared_memory_per_block_optin=kib * 1024))()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "get_device_properties", props(227))  # an H100's
        assert fastpath.split_settings(94 * 8, 128, 2, cuda) == many
        mp.setattr(torch.cuda, "get_device_properties", props(99))  # an RTX 4090's: 80 KiB fit
        assert fastpath.split_settings(94 * 8, 128, 2, cuda) == many
        assert fastpath.split_settings(94 * 8, 128, 4, cuda) == few  # float32: 144 KiB do not
        mp.setattr(torch.cuda, "get_device_properties", props(64))  # a T4's
        assert fastpath.split_settings(94 * 8, 128, 2, cuda) == few
    step = fastpath.GraphedDecode(GPT(CONFIGS["llama"]), KVCache(CONFIGS["llama"], 64, 2100), capture=False)
    assert (step.chunk, step.block_n) == many and step.partial[0].shape[0] == 64 * 4 * 3  # rows x heads x splits


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("B", [3, 64])
def test_captured_step_with_its_own_attention_settings(B):
    """The captured step with the attention kernel's own settings (the short chunks at batch 3, the
    long ones at 64 rows x 2 kv heads), the live slots crossing a chunk's end before the eviction."""
    cfg = dataclasses.replace(CONFIGS["llama"], block_size=2048)
    chunk = fastpath.CHUNK if B == 3 else fastpath.CHUNK_MANY
    step = check_graphed_step(cfg, steps=8, evict_at=5, chunk=None, B=B, device="cuda", capture=True, tol=2e-2,
                              prompt_len=chunk - 3, capacity=chunk + 50)
    assert step.chunk == chunk


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@torch.no_grad()
def test_graphed_scoring_matches_policy_observe(name):
    """DynTS scoring as --cuda-graphs runs it (eagerly here) against Policy.observe, evictions included."""
    cfg = CONFIGS[name]
    model = sharp_model(cfg)
    predictor = dynts.ImportancePredictor(cfg.n_embd).eval()
    B, prompt = 2, torch.randint(0, 256, (2, 12))
    caches, policies = [], []
    for _ in range(2):
        caches.append(KVCache(cfg, B, 32))
        policies.append(dynts.DynTS(32, 8, 0.3, 12, predictor, end_think_id=258, eot_id=256))
        policies[-1].reset(B, 32)
        _, hidden, _ = model(prompt, caches[-1])
        policies[-1].observe(prompt, hidden, torch.arange(12))
    step = fastpath.GraphedDecode(model, caches[1], capture=False)
    observe = fastpath.GraphedObserve(policies[1], step, capture=False)
    token, evictions = torch.randint(0, 256, (B, 1)), 0
    for i in range(45):
        logits, hidden, _ = model(token, caches[0])
        policies[0].observe(token, hidden, torch.arange(caches[0].seen - 1, caches[0].seen))
        _, hidden_fast, _ = step(token, caches[1])
        observe(token, hidden_fast, None)
        assert policies[1].length == policies[0].length == caches[0].length
        torch.testing.assert_close(policies[1].scores[:, :policies[1].length],
                                   policies[0].scores[:, :policies[0].length], atol=1e-4, rtol=1e-4)
        assert torch.equal(policies[1].positions[:, :policies[1].length], policies[0].positions[:, :policies[0].length])
        if policies[0].should_evict(caches[0].length):
            idx = policies[0].select(policies[0].ranking(caches[0]))  # the same slots in both
            for cache, policy in zip(caches, policies):
                cache.keep(idx), policy.keep_scores(idx)
            evictions += 1
        token = logits[:, :256].argmax(dim=-1, keepdim=True)  # bytes only: the thinking never ends
    assert evictions >= 2


def test_graphed_step_refuses_what_it_does_not_compute():
    model = GPT(CONFIGS["llama"]).eval()
    cache = KVCache(model.config, 2, 16)
    step = fastpath.GraphedDecode(model, cache, capture=False)
    with pytest.raises(ValueError, match="one token per row"):
        step(torch.zeros(2, 2, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="one token per row"):
        step(torch.zeros(2, 1, dtype=torch.long), cache, need_attention=True)


@torch.no_grad()
def check_decode_attention(device, dtype, tol):
    """fastpath.decode_attention, with and without RoPE, against model.apply_rope and SDPA in
    float32 on the same inputs: live lengths within a block, at a chunk's end, one past it, and
    with a chunk read in 4 blocks (block_n 16), where the GPU's loop stops at the last live one.
    Returns the last call's inputs (for the interpreter's float16 checks)."""
    torch.manual_seed(0)
    B, H, Hkv, D, cap, chunk = 2, 8, 2, 32, 300, 64
    kv_tol = tol / 10 if dtype == torch.float32 else tol / 2  # (bf16: a rotated key may round one unit apart)
    n_splits = -(-cap // chunk)
    partial = (torch.empty(B * H * n_splits, D, device=device), torch.empty(B * H * n_splits, 2, device=device))
    inv_freq = rope_frequencies(GPTConfig(n_embd=4 * D, n_head=4, rope_theta=500.0)).to(device)  # (D/2,)
    angles = torch.tensor([[57.0], [3.0]], device=device) * inv_freq  # (B, D/2): two rows at two positions
    cos, sin = angles.cos(), angles.sin()
    for rope in [None, (cos, sin)]:
        kv = torch.randn(2, 2, B, Hkv, cap, D, device=device).to(dtype)  # (layer, k|v, B, Hkv, cap, D), as the cache
        for n, block_n in [(1, 64), (64, 64), (65, 64), (300, 64), (1, 16), (17, 16), (65, 16), (130, 16)]:
            qkv = torch.randn(B, (H + 2 * Hkv) * D + 7, device=device).to(dtype)  # rows apart, as c_attn's output
            q, k_new, v_new = (qkv[:, a * D:b * D].view(B, -1, D) for a, b in [(0, H), (H, H + Hkv),
                                                                             (H + Hkv, H + 2 * Hkv)])
            q_ref, k_ref = q.float(), k_new.float()
            if rope is not None:  # the reference: model.apply_rope on q and the new key, then attention
                q_ref, k_ref = (apply_rope(t.unsqueeze(2), cos[:, None, None], sin[:, None, None]).squeeze(2)
                                for t in (q_ref, k_ref))
            expected = kv.clone().float()
            expected[1, 0, :, :, n - 1], expected[1, 1, :, :, n - 1] = k_ref, v_new.float()
            y = fastpath.decode_attention(q, k_new, v_new, kv[1, 0], kv[1, 1], torch.tensor([n], device=device),
                                          partial, rope, chunk, block_n)
            # the new K and V at slot n - 1 (rounded to the cache's dtype), nothing else
            torch.testing.assert_close(kv.float(), expected.to(dtype).float(), atol=kv_tol, rtol=kv_tol)
            ref = torch.nn.functional.scaled_dot_product_attention(
                q_ref.unsqueeze(2), expected[1, 0, :, :, :n], expected[1, 1, :, :, :n], enable_gqa=True).squeeze(2)
            torch.testing.assert_close(y.float(), ref, atol=tol, rtol=tol)
    return cos, sin, q, k_new, v_new, kv, partial


KERNELS = """
import sys, torch
sys.path.insert(0, {tests!r})
from lab import fastpath
from model import MLP, PRESETS, GPTConfig, KVCache, RMSNorm, apply_rope
from test_fastpath import check_decode_attention
assert fastpath.use_triton(torch.zeros(1))
cos, sin, q, k_new, v_new, kv, partial = check_decode_attention("cpu", torch.float32, 1e-5)
# float16 (the interpreter rounds bfloat16 its own way): the kernels round as the eager ops do, bit for bit
kv, n = kv.half(), 65  # slot 64: the second chunk's first
q, k_new, v_new = q.half(), k_new.half(), v_new.half()
fastpath.decode_attention(q, k_new, v_new, kv[1, 0], kv[1, 1], torch.tensor([n]), partial, (cos, sin), 64)
rotated = apply_rope(k_new.unsqueeze(2), cos[:, None, None], sin[:, None, None]).squeeze(2)
assert torch.equal(kv[1, 0, :, :, n - 1], rotated)  # the rotated key
x, a, h = torch.randn(3, 1, 64).half(), torch.randn(3, 1, 64).half(), torch.randn(3, 1, 64).half()
with torch.no_grad():
    for norm in [torch.nn.LayerNorm(64), RMSNorm(64, 1e-5)]:
        norm = norm.half()
        norm.weight.add_(0.1 * torch.randn(64).half())
        x_fused, x_eager = x.clone(), x.clone()
        h_fused = fastpath.add_norm(x_fused, a, norm)
        x_eager += a
        assert torch.equal(x_fused, x_eager) and torch.equal(h_fused, norm(x_eager))
    mlp = MLP(GPTConfig(n_embd=64, mlp_hidden=96, mlp="swiglu")).half()
    assert torch.equal(fastpath.mlp_forward(mlp, h, None), mlp(h))  # silu(gate) * up, one kernel
for n in [1, 64, 65, 150]:  # the in-place compaction against KVCache.keep
    a, b = KVCache(PRESETS["tiny"], 3, 150), KVCache(PRESETS["tiny"], 3, 150)
    a.kv.normal_(), a.pos.copy_(torch.randperm(450).view(3, 150)), b.kv.copy_(a.kv), b.pos.copy_(a.pos)
    a.length = b.length = 150
    idx = torch.stack([torch.randperm(150)[:n].sort().values for _ in range(3)])
    a.keep(idx), fastpath.keep_in_place(b, idx)
    assert b.length == n and torch.equal(b.kv[:, :, :, :, :n], a.kv[:, :, :, :, :n]) and torch.equal(b.pos, a.pos)
print("ok")
"""
STEP = """
import sys, torch
sys.path.insert(0, {tests!r})
from lab import fastpath
from test_fastpath import CONFIGS, check_graphed_step
assert fastpath.use_triton(torch.zeros(1))
check_graphed_step(CONFIGS[{name!r}], steps=6, evict_at=3, chunk=32, B=2)  # 2 of 3 splits live, then 1
print("ok")
"""


def interpret(code: str):
    """Run code in a subprocess with Triton's CPU interpreter on: it must be on before triton is
    first imported."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_kernels_in_the_triton_interpreter():
    """Attention (with and without RoPE) against model.apply_rope and SDPA, the fused norms and
    SwiGLU product against the eager modules (bit for bit in float16), and the in-place compaction
    against KVCache.keep, run by Triton's CPU interpreter."""
    interpret(KERNELS.format(tests=os.path.join(ROOT, "tests")))


def test_attention_reference_on_the_cpu():
    """decode_attention's eager path (the kernels' reference: masked SDPA over the whole buffer)."""
    check_decode_attention("cpu", torch.float32, 1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_attention_kernel_on_cuda():
    """The compiled attention kernel (whose loop stops at the live slots) against SDPA, in bf16."""
    check_decode_attention("cuda", torch.bfloat16, 2e-2)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_whole_step_in_the_triton_interpreter(name):
    """The whole step with its kernels (fused add + norm, SwiGLU's silu * up, RoPE inside the
    attention, the compaction) against GPT.forward, for each block family."""
    interpret(STEP.format(tests=os.path.join(ROOT, "tests"), name=name))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_generate_with_cuda_graphs_on_cuda_decodes_the_plain_paths_tokens(name):
    """generate(cuda_graphs=True) on a GPU, graphs captured, DynTS scoring inside them: the plain
    path's greedy tokens and the same evictions (a sharp model, so that rounding flips no argmax)."""
    import generate
    cfg = CONFIGS[name]
    model = sharp_model(cfg).cuda()
    predictor = dynts.ImportancePredictor(cfg.n_embd).cuda().eval()
    prompt = torch.randint(0, 256, (3, 12), device="cuda")
    runs = []
    for graphs in (False, True):
        policy = dynts.DynTS(40, 8, 0.3, 12, predictor, end_think_id=258, eot_id=256)
        evictions = []
        on_step = lambda cache, eviction: eviction is not None and evictions.append(cache.pos[:, :cache.length].clone())
        tokens, _ = generate.generate(model, prompt, policy, 100, vocab_limit=256, cuda_graphs=graphs,
                                      on_step=on_step)
        runs.append((tokens, evictions))
    assert torch.equal(runs[0][0], runs[1][0])
    assert len(runs[0][1]) == len(runs[1][1]) >= 3 and all(torch.equal(a, b) for a, b in zip(*[r[1] for r in runs]))
