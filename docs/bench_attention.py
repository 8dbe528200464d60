"""The attention kernel's settings by shape, and where a decode step's GPU time goes (CUDA only).

    python docs/bench_attention.py sweep       # fastpath's split-KV kernel alone, 52 settings x 9 shapes
    python docs/bench_attention.py breakdown   # one step of a 4-layer r1-llama-8b, kernel by kernel
    python docs/bench_attention.py floor       # the whole 32-layer step against its floor, at equal memory

`sweep`: 32 calls of fastpath.decode_attention (r1-llama-8b's heads: 32 query, 8 KV, 128 wide,
bf16, RoPE on), captured as one CUDA graph and replayed (median of 7), over 8 layers' K and V
buffers in turn; reports the bytes of live K and V read per second against a large copy's.
`breakdown`: the step of fastpath.GraphedDecode run eagerly (each kernel's own time is the same
as in a graph) under torch.profiler, at the equal-memory shapes, the settings fastpath picks.
`floor`: the real 32-layer r1-llama-8b (random bf16) at profile.py's equal-memory batches on an
H100 (Full 30 rows at 15k steps, DynTS 94 across its eviction cycle, every 100th live length),
three CUDA graphs each: GraphedDecode's whole step (without the policy's scoring and the
sampling); its floor, only what must read the weights and the live K and V (the GEMMs, the LM
head and the attention's split kernel: no norm, RoPE, activation, combine or embedding); and the
GEMMs alone. The DynTS / Full ratio of the floors is the most that fusing away the rest could give
with these GEMMs and this kernel.
docs/PERF_NOTES.md has what this printed on H100s, 2026-11-27.
"""

import dataclasses
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lab import costs  # noqa: E402
from lab import fastpath  # noqa: E402
from model import GPT, PRESETS, GPTConfig, KVCache, rope_frequencies  # noqa: E402
from lab.timing import Clock, copy_bandwidth  # noqa: E402

DEV = torch.device("cuda")
H, HKV, D, LAYERS = 32, 8, 128, 8
WARPS, STAGES = fastpath.NUM_WARPS, fastpath.NUM_STAGES  # fastpath's own (the sweep changes them)
SHAPES = [(94, 5000, 2900), (94, 5000, 4000), (94, 5000, 5000), (30, 15500, 15500), (30, 15500, 7500),
          (8, 15500, 15500), (8, 15500, 5000), (8, 15500, 1500), (8, 5000, 4000)]  # (batch, capacity, live slots)
SETTINGS = [(c, n, w, s) for c in (128, 256, 512, 1024) for n in (64, 128) for w in (4, 8) for s in (1, 2, 3, 4)
            if n <= c and not (c == 128 and s > 1)]  # (chunk, block_n, warps, stages); one block: no pipeline
PREVIOUS = (128, 128, 4, 1)  # fastpath's one setting for every batch until 2026-11-27


def median_s(fn, n=7) -> float:
    clock, times = Clock(DEV), []
    for _ in range(n):
        start = clock.stamp()
        fn()
        end = clock.stamp()
        clock.sync()
        times.append(clock.seconds(start, end))
    return sorted(times)[n // 2]


def attention_bandwidth(B, cap, live, chunk, block_n, warps, stages, k, v) -> float:
    fastpath.NUM_WARPS, fastpath.NUM_STAGES = warps, stages
    splits = -(-cap // chunk)
    partial = (torch.empty(B * H * splits, D, device=DEV), torch.empty(B * H * splits, 2, device=DEV))
    q = torch.randn(B, H, D, device=DEV, dtype=torch.bfloat16)
    k_new, v_new = torch.randn(2, B, HKV, D, device=DEV, dtype=torch.bfloat16)
    angles = torch.rand(B, D // 2, device=DEV)
    rope = angles.cos(), angles.sin()  # once a step for all layers, as GraphedDecode computes them
    n_live = torch.tensor([live], device=DEV)

    def layers():
        for i in range(32):
            fastpath.decode_attention(q, k_new, v_new, k[i % LAYERS], v[i % LAYERS], n_live, partial, rope, chunk,
                                      block_n)
    layers()  # compiles
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        layers()
    return 32 * B * HKV * live * D * 2 * 2 / median_s(graph.replay)  # K and V, bf16


def sweep():
    bw = copy_bandwidth(DEV, 2**31)  # timing.py's, as profile.py measures it
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s; K and V read per second, as a share of it", flush=True)
    for B, cap, live in SHAPES:
        k, v = torch.randn(2, LAYERS, B, HKV, cap, D, device=DEV, dtype=torch.bfloat16)
        rates = sorted(((attention_bandwidth(B, cap, live, *s, k, v), s) for s in SETTINGS), reverse=True)
        fastpath.NUM_WARPS, fastpath.NUM_STAGES = WARPS, STAGES  # (split_settings reads NUM_STAGES)
        picked = fastpath.split_settings(B * HKV, D, 2, DEV) + (WARPS, STAGES)
        share = {s: r / bw for r, s in rates}
        print(f"batch {B}, capacity {cap}, live {live}: fastpath's {picked} {share[picked]:.1%}; the previous "
              f"{PREVIOUS} {share[PREVIOUS]:.1%}; best: "
              + ", ".join(f"{s} {r / bw:.1%}" for r, s in rates[:4]), flush=True)
        del k, v
        torch.cuda.empty_cache()


def llama(n_layer: int) -> GPT:
    """r1-llama-8b's shape with `n_layer` layers, random bf16 weights, on the GPU."""
    cfg = dataclasses.replace(PRESETS["r1-llama-8b"], n_layer=n_layer)
    torch.manual_seed(0)
    with DEV:
        model = GPT(cfg).to(torch.bfloat16).eval()
        model.inv_freq = rope_frequencies(cfg)
    torch.cuda.empty_cache()  # (the float32 weights it was built in)
    return model


def filled_cache(cfg: GPTConfig, B: int, cap: int, live: int) -> KVCache:
    """A cache of random K and V whose next token goes to slot live - 1 (so a step reads `live` slots)."""
    cache = KVCache(cfg, B, cap, device=DEV, dtype=torch.bfloat16)
    cache.kv.normal_()
    cache.length = cache.seen = live - 1
    return cache


@torch.no_grad()
def breakdown():
    from torch.profiler import ProfilerActivity, profile
    model = llama(4)
    for B, cap, live in [(94, 5000, 4000), (94, 5000, 2900), (30, 15500, 15500), (8, 5000, 4000)]:
        cache = filled_cache(model.config, B, cap, live)
        step = fastpath.GraphedDecode(model, cache, capture=False)
        token = torch.zeros(B, 1, dtype=torch.long, device=DEV)

        def once():
            step(token, cache)
            cache.length -= 1  # the same slot again
            cache.seen -= 1
        for _ in range(3):
            once()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                once()
            torch.cuda.synchronize()
        kernels = {e.key: e.self_device_time_total / 5 for e in prof.key_averages() if e.self_device_time_total > 0}
        total = sum(kernels.values())
        print(f"\n4 layers, batch {B}, capacity {cap}, live {live}, chunk {step.chunk}: {total / 1e3:.2f} ms a step")
        for name, t in sorted(kernels.items(), key=lambda kv: -kv[1])[:10]:
            print(f"  {t / 1e3:8.3f} ms {t / total:6.1%}  {name[:100]}")
        del cache, step
        torch.cuda.empty_cache()


class NoLaunch:
    """Stands in for a Triton kernel: launching it does nothing (the floor has no combine step)."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def graphed(fn) -> torch.cuda.CUDAGraph:
    fn()  # compiles, and cuBLAS picks its kernels
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


@torch.no_grad()
def floor_times(model: GPT, B: int, cap: int, lives: list[int]) -> list[dict]:
    """ms of GraphedDecode's whole step, of its floor and of the GEMMs alone, at each live length
    (the graphs read it from the device, as in a decode)."""
    cfg, cache = model.config, filled_cache(model.config, B, cap, lives[0])
    step = fastpath.GraphedDecode(model, cache)
    h, a = torch.randn(B, 1, cfg.n_embd, device=DEV, dtype=torch.bfloat16), \
        torch.randn(B, 1, cfg.mlp_hidden, device=DEV, dtype=torch.bfloat16)  # any activations: speed is the same
    q = torch.randn(B, H, D, device=DEV, dtype=torch.bfloat16)
    k_new, v_new = torch.randn(2, B, HKV, D, device=DEV, dtype=torch.bfloat16)
    n_live = torch.tensor([lives[0]], device=DEV)

    def floor(attention=True):
        for block in model.blocks:
            block.attn.c_attn(h)
            if attention:
                layer = block.attn.layer
                fastpath.decode_attention(q, k_new, v_new, cache.kv[layer, 0], cache.kv[layer, 1], n_live,
                                          step.partial, None, step.chunk, step.block_n)
            block.attn.c_proj(h), block.mlp.c_gate(h), block.mlp.c_fc(h), block.mlp.c_proj(a)
        model.lm_head(h[:, -1])
    combine, fastpath._attn_combine_kernel = fastpath._attn_combine_kernel, NoLaunch()
    try:
        floor_graph, gemms_graph = graphed(floor), graphed(lambda: floor(attention=False))
    finally:
        fastpath._attn_combine_kernel = combine
    gemms, times = median_s(gemms_graph.replay, 11) * 1e3, []
    for live in lives:
        step.slot.fill_(live - 1), step.pos.fill_(live - 1), n_live.fill_(live)
        times.append(dict(step=median_s(step.graph.replay, 11) * 1e3, floor=median_s(floor_graph.replay, 11) * 1e3,
                          gemms=gemms))
    del step, cache, floor_graph, gemms_graph
    torch.cuda.empty_cache()
    return times


def floor():
    model = llama(32)
    weights = costs.analytic(model)["weight_bytes"]  # read a step, as profile.py counts them
    bw = copy_bandwidth(DEV, 2**31)
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw / 1e12:.2f} TB/s; weights read a step "
          f"{weights / 1e9:.2f} GB; ms a step (median of 11 graph replays)", flush=True)
    # live slots: the middle of Full's last window before 15k; DynTS's cycle (2,901-5,000), every 100th
    shapes = dict(full=(30, 15500, [15450]), dynts=(94, 5000, list(range(2950, 5000, 100))))
    mean = {}
    for name, (B, cap, lives) in shapes.items():
        rows = floor_times(model, B, cap, lives)
        for live, t in zip(lives, rows):
            kv = 32 * B * HKV * live * D * 2 * 2
            print(f"{name}, batch {B}, live {live}: step {t['step']:.2f}, floor {t['floor']:.2f} (step - floor "
                  f"{t['step'] - t['floor']:.2f}), GEMMs {t['gemms']:.2f} (weights read at "
                  f"{weights / t['gemms'] / 1e9:.2f} TB/s), the rest of the floor {t['floor'] - t['gemms']:.2f} "
                  f"(K and V read at {kv / (t['floor'] - t['gemms']) / 1e9:.2f} TB/s)", flush=True)
        mean[name] = {k: statistics.mean(t[k] for t in rows) for k in rows[0]}  # over DynTS's cycle
    tput = {name: {k: shapes[name][0] / t * 1e3 for k, t in mean[name].items()} for name in shapes}
    print(f"DynTS / Full tokens/s (DynTS over its cycle): steps {tput['dynts']['step'] / tput['full']['step']:.3f}x, "
          f"floors {tput['dynts']['floor'] / tput['full']['floor']:.3f}x, DynTS's floor against Full's step "
          f"{tput['dynts']['floor'] / tput['full']['step']:.3f}x")


if __name__ == "__main__":
    modes = dict(sweep=sweep, breakdown=breakdown, floor=floor)
    if len(sys.argv) != 2 or sys.argv[1] not in modes or not torch.cuda.is_available():
        sys.exit("usage: python docs/bench_attention.py sweep|breakdown|floor (needs CUDA and Triton)")
    modes[sys.argv[1]]()
