"""Profile decoding: throughput, KV memory and FLOPs against decoding steps, full cache vs DynTS.

The measured version of DynTS's efficiency figure (Guo et al., arXiv 2601.18383): the full cache
(the paper's "Transformers"; here our own, which runs near the roofline) and DynTS over 0-15k
decoding steps, with DynTS / full at the paper's marks. Random weights (speed does not depend on
them), no prefill, and greedy sampling that never picks a special token, so the thinking never
ends. Every decode step runs generate.step and is timed on the device's clock, with what the
official code leaves out of its timing: the predictor, the selection and the compaction.

At each mark, for each policy: tokens/s over the steps timed for it; the live KV bytes, the
buffers' and the peak allocated; GFLOPs per token and the memory roofline (the bytes a step reads
over the read bandwidth measured in the same run; formulas and sources in lab/costs.py); the
policy's share of decode time. `--batch-size max` compares at equal memory (each policy the most
rows its cache lets fit); `--jump` times each mark without decoding the steps before it
(lab/timing.py); `--cuda-graphs` is the speed layer (lab/fastpath.py). docs/EFFICIENCY.md has
the runs.

Its name, the one this project's users asked for, shadows the standard library's `profile`
module: see the shim just below.
"""

from __future__ import annotations  # (type hints stay text: the shim below may import no torch)

import os
import sys

if __name__ != "__main__":
    # A top-level profile.py shadows the standard library's `profile` whenever the repository
    # root is on sys.path, and cProfile does `import profile` (torch.compile imports cProfile,
    # through torch._dynamo). So when imported as a module, this file is also the standard
    # library's profile: load that one from its own file and re-export what it provides.
    # (This runs before `import torch`, which may itself import cProfile.)
    import importlib.util as _ilu

    _spec = _ilu.spec_from_file_location("_stdlib_profile", os.path.join(os.path.dirname(os.__file__), "profile.py"))
    _stdlib_profile = _ilu.module_from_spec(_spec)
    _spec.loader.exec_module(_stdlib_profile)
    run, runctx, Profile, _Utils = (_stdlib_profile.run, _stdlib_profile.runctx, _stdlib_profile.Profile,
                                    _stdlib_profile._Utils)

import argparse
import datetime
import functools
import json
import time

try:
    import torch

    import dynts
    from lab import view
    from lab.cli import UsageError, run_cli
    from lab.flags import check_profile_flags
    from lab.costs import MEMORY_MARGIN, analytic, bytes_per_step, check_fits, equal_memory_batches, flops_per_token
    from lab.fastpath import capture, keep_in_place
    from lab.policies import NAMES, make_policy, uses_ratio
    from generate import step
    from model import END_THINK, EOT, GPT, PRESETS, THINK, KVCache, get_encoding, rope_frequencies
    from lab.timing import Clock, eviction_cycle, jump, read_bandwidth, timed_spans, warm_up_eviction
except ModuleNotFoundError:
    if __name__ != "profile":  # (imported as the standard library's profile where torch is missing: that one is enough)
        raise

PAPER_MARKS = [2000, 5000, 7000, 10000, 12000, 15000]
PAPER_MULTIPLIERS = {  # DynTS / Transformers in the paper's efficiency figure, at PAPER_MARKS
    "throughput": [1.39, None, None, None, None, 3.74],
    "kv_memory": [0.64, None, None, None, None, 0.20],
    "gflops": [0.85, None, None, None, None, 0.44],
}
# The paper's settings for its model; the small presets get a tenth of them, to fit their block_size.
DEFAULTS = {
    "r1-llama-8b": dict(prompt_len=500, steps=15000, budget=5000, window=2000),
    "gpt2": dict(prompt_len=50, steps=900, budget=500, window=200),
    "tiny": dict(prompt_len=50, steps=1500, budget=500, window=200),
}
PROGRESS_S = 30  # while decoding, a progress line every this many seconds


# -----------------------------------------------------------------------------
# The decode loop, timed step by step


def profile_policy(model: GPT, policy: dynts.Policy, batch_size: int, prompt_len: int, steps: int,
                   special_ids: torch.Tensor, marks: list[int], tput_window: int, on_mark=None,
                   cuda_graphs: bool = False, jumps: bool = False, out=None) -> dict:
    """Decode `steps` tokens greedily under `policy` as generate.py does, after a prompt of
    `prompt_len` random slots (`jump` to step 0: no prefill); or (`jumps`) only each mark's
    window, after a jump to its start. Each step is timed from the start of its forward to the
    start of the next: the forward, the policy's scoring, the selection and compaction when the
    cache is full, the sampling. Returns per-step arrays (None where jumped over) and the peak
    memory allocated while decoding as each mark's window (lo, hi] ends (the cache, activations,
    each compaction's copy in flight); then calls `on_mark(step, lo, hi, jumped_to, record)`.
    Progress lines go to `out`. Call it under torch.no_grad(), as main does."""
    device, cfg, B, P = model.wte.weight.device, model.config, batch_size, prompt_len
    capacity = policy.budget if policy.budget is not None else P + steps
    warm_up_eviction(policy, model, B, cuda_graphs)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base_alloc = torch.cuda.memory_allocated()
    cache = KVCache(cfg, B, capacity, device=device, dtype=model.wte.weight.dtype)
    cache.kv.normal_()  # random keys and values, like the weights: what the slots that a jump fills hold
    policy.reset(B, capacity, device)
    clock = Clock(device)
    rec = dict(policy=policy.name, batch_size=B, budget=policy.budget, window=policy.window, ratio=policy.ratio,
               kv_buffer_bytes=cache.kv.numel() * cache.kv.element_size(), cache_buffer_bytes=cache.allocated_bytes(),
               evictions=0, eviction_cycle=None, decoded=[], peak_alloc_bytes={},
               base_alloc_bytes=base_alloc if device.type == "cuda" else None)
    stamps, graphs = dict(fwd=[], pol=[]), None

    def timed_forward(tokens, cache, need_attention=False):  # the step's forward, then a stamp: the policy's time starts
        out = (graphs[0] if graphs else model)(tokens, cache, need_attention=need_attention)
        stamps["fwd"].append(clock.stamp())
        return out

    def timed_step(tokens, i):  # generate.step, timed: the forward, then the policy's scoring and eviction
        observe = graphs[1] if graphs else policy.observe
        logits, eviction = step(model, cache, policy, tokens, (timed_forward, observe))
        if i > 0:  # (step 0: an untimed warm-up step)
            rec["kv_read"][i - 1] = cache.length if eviction is None else eviction[1].shape[1]
            rec["kv_held"][i - 1] = cache.length
            rec["evictions"] += eviction is not None
        stamps["pol"].append(clock.stamp())
        return logits

    def sample(logits):  # greedy, never a special token: the trace never ends its thinking
        return logits.index_fill_(1, special_ids, float("-inf")).argmax(dim=-1, keepdim=True)  # (B, 1)

    if cuda_graphs:  # compaction with no copy in flight, as the fast path compacts (lab/fastpath.py)
        cache.keep = functools.partial(keep_in_place, cache)
    cycle = rec["eviction_cycle"] = eviction_cycle(cache, policy, P, cfg.n_embd) if jumps else None
    spans = timed_spans(policy, marks, P, tput_window, cycle)  # mark -> the steps (lo, hi] timed for it
    plan = sorted(set(spans.values())) if jumps else [(0, steps)]  # the stretches decoded, each after a jump
    n = max(hi for _, hi in plan)
    if P + n > cfg.block_size:
        raise UsageError(f"--jump: {policy.name}'s last window ends at step {n}, past the block_size "
                         f"{cfg.block_size} less the prompt's {P} tokens (fewer --steps)")
    jump(cache, policy, plan[0][0], P, cfg.n_embd, cycle)
    token = torch.randint(0, 256, (B, 1), device=device)  # a random byte: no special token
    if cuda_graphs:  # the fast path: capture the decode step and the scoring
        t0 = time.perf_counter()
        graphs = capture(model, cache, policy)
        rec["capture_s"] = time.perf_counter() - t0
    sample(timed_step(token, 0))  # a warm-up step, untimed
    rec.update(kv_read=[None] * n, kv_held=[None] * n, step_s=[None] * n, policy_s=[None] * n)
    ends = {}  # step -> the marks whose windows end there
    for m, (lo, hi) in spans.items():
        ends.setdefault(hi, []).append(m)
    if device.type == "cuda":  # from here on, decoding's peak
        torch.cuda.reset_peak_memory_stats()

    def collect(lo, first, last):  # the times of steps first..last of the stretch after lo (after a sync)
        for i in range(first, last + 1):
            rec["step_s"][i - 1] = clock.seconds(stamps["start"][i - lo - 1], stamps["start"][i - lo])
            rec["policy_s"][i - 1] = clock.seconds(stamps["fwd"][i - lo - 1], stamps["pol"][i - lo - 1])

    total, done, t0 = sum(hi - lo for lo, hi in plan), 0, time.perf_counter()
    shown = t0
    for lo, hi in plan:
        jump(cache, policy, lo, P, cfg.n_embd, cycle)
        stamps.update(start=[clock.stamp()], fwd=[], pol=[])
        collected = lo
        for i in range(lo + 1, hi + 1):
            token = sample(timed_step(token, i))
            stamps["start"].append(clock.stamp())
            done += 1
            due = [m for m in ends.get(i, []) if spans[m][0] >= lo]  # marks whose windows end here (in this stretch)
            if due:
                clock.sync()
                collect(lo, collected + 1, i)
                collected = i
                for m in due:
                    if device.type == "cuda":
                        rec["peak_alloc_bytes"][m] = torch.cuda.max_memory_allocated()
                    if on_mark:
                        on_mark(m, *spans[m], lo, rec)
            if out is not None and time.perf_counter() - shown > PROGRESS_S:
                clock.sync()
                shown = time.perf_counter()
                print(f"  ... {policy.name}: {done} of {total} steps decoded, {B * done / (shown - t0):.1f} tokens/s "
                      f"so far, ~{(shown - t0) * (total - done) / done:.0f} s left", file=out, flush=True)
        clock.sync()
        collect(lo, collected + 1, hi)
        rec["decoded"].append([lo, hi])
    rec["wall_s"] = time.perf_counter() - t0
    graphs = cache = None  # (frees the graphs and the cache before the next policy)
    return rec


# -----------------------------------------------------------------------------
# Command line (the tables and the figure are view.py's)


def plot(result: dict, path: str):
    """The three-panel figure of a run's result (this file's JSON): view.plot_profile, with costs.py's formulas."""
    view.plot_profile(result, path, flops_per_token, bytes_per_step, PAPER_MARKS)


def main(preset="r1-llama-8b", policies="full,dynts", batch_size=8, prompt_len=None, steps=None, budget=None,
         window=None, ratio=0.3, device=None, dtype="auto", cuda_graphs=False, jump=False, every=None,
         tput_window=100, seed=1337, json_path=None, plot_path=None, memory_gib=None, out=None) -> dict:
    """Profile each policy; print the tables; return everything."""
    out = out or sys.stdout  # (read now: a default bound at import would miss a later redirect)
    if preset not in PRESETS:
        raise UsageError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    unused = [flag for flag, value in (("--budget", budget), ("--window", window)) if value is not None]
    d = DEFAULTS.get(preset, DEFAULTS["tiny"])
    prompt_len = d["prompt_len"] if prompt_len is None else prompt_len
    steps = d["steps"] if steps is None else steps
    budget = d["budget"] if budget is None else budget
    window = d["window"] if window is None else window
    every = (steps + 1 if jump else 1000) if every is None else every  # --jump: only the paper's marks, by default
    names, batch_size, device, dtype = check_profile_flags(cfg, preset, policies, batch_size, prompt_len, steps, budget,
                                                           ratio, device, dtype, cuda_graphs, every, tput_window, seed,
                                                           json_path, plot_path)
    if unused and names == ["full"]:  # said, not silently dropped (as generate.py says it)
        print(f"profile.py: note: full never evicts; {' and '.join(unused)} ignored", file=sys.stderr)
    elt = getattr(torch, dtype).itemsize
    capacities = {n: prompt_len + steps if n == "full" else budget for n in names}  # each policy's cache
    free = check_fits(cfg, preset, batch_size, capacities, prompt_len, steps, budget, dtype, device, memory_gib)
    device = torch.device(device)
    torch.manual_seed(seed)
    enc = get_encoding()
    special_ids = torch.tensor([enc.encode_single_token(t) for t in (EOT, THINK, END_THINK)], device=device)
    # Validate the policies' settings before spending time on the model.
    for name in names:
        make_policy(name, budget, window, ratio, prompt_len, None, enc)
    with torch.device(device):
        model = GPT(cfg).to(getattr(torch, dtype)).eval()
        if cfg.positions == "rope":  # RoPE's frequencies stay float32, as hf.load_model keeps them (.to rounds buffers)
            model.inv_freq = rope_frequencies(cfg)
        predictor = dynts.ImportancePredictor(cfg.n_embd).to(getattr(torch, dtype)).eval() if "dynts" in names else None
    a = analytic(model, predictor)
    batches, fixed = {name: batch_size for name in names}, None
    if batch_size == "max":  # each policy: the most rows its cache lets fit beside what the weights took
        limit = None if memory_gib is None else int(memory_gib * 2**30)  # as on a smaller GPU
        batches, fixed = equal_memory_batches(cfg, capacities, elt, free, a["predictor_bytes"], device, cuda_graphs, limit)
    bandwidth = read_bandwidth(device, 2 ** 31 if device.type == "cuda" else 2 ** 26)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    marks = sorted({m for m in PAPER_MARKS if m <= steps} | set(range(every, steps + 1, every)) | {steps})
    result = dict(
        command="python profile.py " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("profile.py") else None,
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), device_name=device_name,
        torch=torch.__version__,
        config=dict(preset=preset, policies=names, batch_size=batch_size, prompt_len=prompt_len, steps=steps,
                    budget=budget, window=window, ratio=ratio, device=str(device), dtype=dtype,
                    cuda_graphs=cuda_graphs, jump=jump, every=every, tput_window=tput_window, seed=seed,
                    memory_gib=memory_gib),
        batch_sizes=batches, analytic=a, read_bandwidth_Bps=bandwidth, marks={}, records={}, multipliers={})
    fits = ""
    if batch_size == "max":
        room = f"{memory_gib:.1f} GiB of --memory-gib" if memory_gib else f"{free / 2**30:.1f} GiB free"
        fits = f" ({', '.join(f'{k} {v}' for k, v in batches.items())}: the most that fit the {room}, less " \
               f"{MEMORY_MARGIN:.0%}, beside {fixed / 2**30:.1f} GiB of weights)"
    print(view.format_profile_header(result, fits), file=out, flush=True)

    def write_json():
        if json_path:
            with open(json_path, "w") as f:
                json.dump(result, f)

    finished = []  # the policies profiled so far (an interrupted run keeps their records)
    try:
        for name in names:
            policy = make_policy(name, budget, window, ratio, prompt_len, predictor, enc)
            print(f"\n{name}, batch {batches[name]}" + (f" (budget {budget}, window {window}"
                  + (f", ratio {ratio})" if uses_ratio(name) else ")") if name != "full" else "")
                  + "\n" + view.PROFILE_ROW_HEAD, file=out, flush=True)
            rows = result["marks"][name] = []

            def on_mark(step, lo, hi, jumped_to, rec):
                rows.append(view.profile_row(rec, a, step, lo, hi, jumped_to, bandwidth, flops_per_token, bytes_per_step))
                print(view.format_profile_row(rows[-1]), file=out, flush=True)

            with torch.no_grad():
                rec = profile_policy(model, policy, batches[name], prompt_len, steps, special_ids, marks, tput_window,
                                     on_mark, cuda_graphs, jump, out)
            timed = [t for t in rec["step_s"] if t is not None]
            rec["policy_share"] = sum(t for t in rec["policy_s"] if t is not None) / sum(timed)
            print(view.format_profile_summary(rec, rows), file=out, flush=True)
            result["records"][name] = rec
            write_json()
            finished.append(name)
    except KeyboardInterrupt:
        write_json()
        kept = f"the records of {', '.join(finished)} are in {json_path}; " if json_path and finished else ""
        raise KeyboardInterrupt(f"{kept}to continue, run again with --policies "
                                f"{','.join(n for n in names if n not in finished)}") from None
    if "full" in names and len(names) > 1:
        result["multipliers"] = view.profile_multipliers(result["marks"])
        for name, ms in result["multipliers"].items():
            print("\n" + view.format_profile_multipliers(name, ms, batches, PAPER_MARKS, PAPER_MULTIPLIERS), file=out,
                  flush=True)
    write_json()
    if plot_path:
        plot(result, plot_path)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="r1-llama-8b", help=f"model shape, random weights: {', '.join(PRESETS)} "
                   "(default: r1-llama-8b, the paper's R1-Distill-Llama-8B)")
    p.add_argument("--policies", default="full,dynts", help=f"comma-separated, from {', '.join(NAMES)} "
                   "(default: full,dynts; multipliers are against full)")
    p.add_argument("--batch-size", default=8, help="sequences decoded together, or max: for each policy the most "
                   f"that fit the GPU's free memory with its cache, less {MEMORY_MARGIN * 100:.0f}%% "  # (%%: argparse's %)
                   "(CUDA only; default: 8)")
    p.add_argument("--memory-gib", type=float, help="with --batch-size max: the memory to fill, as on a smaller GPU "
                   "(default: all that is free)")
    p.add_argument("--prompt-len", type=int, help="prompt tokens (random keys and values), protected by DynTS "
                   "(default: the paper's 500 for the 8B presets, 50 for the others)")
    p.add_argument("--steps", type=int, help="decode steps (default: 15000 for the 8B presets, 1500 for tiny)")
    p.add_argument("--budget", type=int, help="evict when the cache holds this many tokens (default: the paper's 5000 "
                   "for the 8B presets, 500 for the others)")
    p.add_argument("--window", type=int, help="the most recent tokens, always kept (default: the paper's 2000 for the "
                   "8B presets, 200 for the others)")
    p.add_argument("--ratio", type=float, default=0.3,
                   help="fraction of the older tokens kept at an eviction (default: 0.3)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when there is one)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="weights and KV cache (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--cuda-graphs", action="store_true", help="replay each decode step as one CUDA graph with a "
                   "split-KV attention kernel (fastpath.py; CUDA only, its kernels need Triton; the plain path is "
                   "GPT.forward)")
    p.add_argument("--jump", action="store_true", help="decode only what each mark is timed over, from the state a "
                   "decode is in there (random keys and values): the --tput-window steps up to it, or, once a policy "
                   "evicts, whole eviction cycles from the last eviction before it, at least --tput-window steps")
    p.add_argument("--every", type=int, help="report every this many steps, besides the paper's marks 2k, 5k, 7k, "
                   "10k, 12k, 15k and --steps (default: 1000; with --jump, none)")
    p.add_argument("--tput-window", type=int, default=100, help="throughput at a mark is over this many steps up "
                   "to it (default: 100)")
    p.add_argument("--seed", type=int, default=1337, help="random seed (weights, keys and values)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="write everything measured, per step, as JSON")
    p.add_argument("--plot", dest="plot_path", metavar="PATH",
                   help="write the three-panel figure as a PNG (needs matplotlib)")
    return p.parse_args(argv)


def cli(argv=None):
    run_cli("profile.py", main, parse_args, argv)


if __name__ == "__main__":
    cli()
