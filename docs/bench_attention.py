"""The attention kernel's settings by shape, and where a decode step's GPU time goes (CUDA only).

    python docs/bench_attention.py sweep       # fastpath's split-KV kernel alone, 52 settings x 9 shapes
    python docs/bench_attention.py breakdown   # one step of a 4-layer r1-llama-8b, kernel by kernel

`sweep`: 32 calls of fastpath.decode_attention (r1-llama-8b's heads: 32 query, 8 KV, 128 wide,
bf16, RoPE on), captured as one CUDA graph and replayed (median of 7), over 8 layers' K and V
buffers in turn; reports the bytes of live K and V read per second against a large copy's.
`breakdown`: the step of fastpath.GraphedDecode run eagerly (each kernel's own time is the same
as in a graph) under torch.profiler, at the equal-memory shapes, the settings fastpath picks.
PERF_NOTES.md (call 5) has what this printed on an H100, 2026-11-27.
"""

import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastpath  # noqa: E402
from model import GPT, PRESETS, KVCache, rope_frequencies  # noqa: E402
from timing import Clock, copy_bandwidth  # noqa: E402

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


@torch.no_grad()
def breakdown():
    from torch.profiler import ProfilerActivity, profile
    cfg = dataclasses.replace(PRESETS["r1-llama-8b"], n_layer=4)
    with DEV:
        model = GPT(cfg).to(torch.bfloat16).eval()
        model.inv_freq = rope_frequencies(cfg)
    for B, cap, live in [(94, 5000, 4000), (94, 5000, 2900), (30, 15500, 15500), (8, 5000, 4000)]:
        cache = KVCache(cfg, B, cap, device=DEV, dtype=torch.bfloat16)
        cache.kv.normal_()
        cache.length = cache.seen = live - 1
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


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("sweep", "breakdown") or not torch.cuda.is_available():
        sys.exit("usage: python docs/bench_attention.py sweep|breakdown (needs CUDA and Triton)")
    sweep() if sys.argv[1] == "sweep" else breakdown()
