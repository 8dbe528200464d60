"""Profile decoding: throughput, KV memory and FLOPs against decoding steps, full cache vs DynTS.

The measured version of the efficiency figure of DynTS (Guo et al., arXiv 2601.18383): full-cache
decoding ("Transformers") and DynTS over 0-15k decoding steps, with the DynTS / full multipliers
at 2k, 5k, 7k, 10k, 12k and 15k steps. `python profile.py` decodes with random weights (speed does
not depend on them) and times every decode step on the device's own clock, including what the
official code leaves out of its timing: the predictor, the selection and the cache compaction.

What it reports at the paper's marks and every `--every` steps, for each policy:
- throughput: batch x steps / seconds, over the `--tput-window` steps up to the mark;
- KV memory: the live slots' bytes (analytic), the cache buffers' bytes and, as "alloc",
  torch.cuda.max_memory_allocated while decoding, less what was allocated before the cache
  (the weights): the buffers plus each step's activations and each compaction's copy in flight
  (measured);
- GFLOPs per token, analytic. For one token that attends to S live slots:
      2 * N_matmul + 4 * n_layer * n_head * head_dim * S  (+ 2 * N_predictor for DynTS)
  N_matmul counts the weights of every matrix multiply: the blocks' Linear layers and the LM
  head (tied to the embedding); a multiply-add is 2 FLOPs. The attention term is QK^T (2 FLOPs
  per head dimension per slot) plus AV (2 more). This is the forward-pass count of Kaplan et al.
  2020, "Scaling Laws for Neural Language Models", Table 1 (2N + 2 n_layer n_ctx d_attn, with
  the de-embedding counted and AV added), and of PaLM (Chowdhery et al. 2022), Appendix B
  (6N + 12 L H Q T for training = 3 x this forward count). Embedding lookups, norms, softmax
  and biases are left out (well under 1%). Grouped-query attention shares keys and values
  between heads but not the FLOPs: every query head still does its dot products.
- the memory roofline of the step: the bytes it must read (every weight once, plus the live
  keys and values) over the device's copy bandwidth, measured in the same run (a large
  device-to-device copy, bytes read + bytes written over its time); and the fraction achieved;
- the share of decode time spent in the policy (predictor, selection, compaction), and the
  DynTS / full multipliers.

Random-weight trajectories: the prompt is random byte tokens, and the special tokens
(<think>, </think>, end-of-text) are masked out of sampling, so the think-end never comes, as
in a long trace: DynTS protects the prompt and scores every generated token with its (random)
predictor. Tokens are greedy (argmax), so every run decodes the same trajectory.

`--cuda-graphs` (CUDA only) replays each decode step as one CUDA graph, with a split-KV
attention kernel that reads the live length from the device: fastpath.py, the speed layer, for
both block families. The plain path is GPT.forward, as in generate.py.

This file is named as the issue asks, and shadows the standard library's `profile` module:
see the shim just below.
"""

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
import copy
import dataclasses
import datetime
import json
import time

import torch

import dynts
import view
from cli import (UsageError, cache_bytes, check_matplotlib, check_memory, check_output_path, resolve_device, run_cli,
                 weight_bytes)
from fastpath import GraphedDecode, GraphedObserve, keep_in_place
from generate import NEEDS_ATTENTION, POLICIES, make_policy
from model import END_THINK, EOT, GPT, PRESETS, THINK, KVCache, get_encoding, rope_frequencies

PAPER_MARKS = [2000, 5000, 7000, 10000, 12000, 15000]
PAPER_MULTIPLIERS = {  # DynTS / Transformers in the paper's efficiency figure, at PAPER_MARKS
    "throughput": [1.39, None, None, None, None, 3.74],
    "kv_memory": [0.64, None, None, None, None, 0.20],
    "gflops": [0.85, None, None, None, None, 0.44],
}
# The paper's settings for paper-8b; the small presets get a tenth of them, to fit their block_size.
DEFAULTS = {
    "paper-8b": dict(prompt_len=500, steps=15000, budget=5000, window=2000),
    "gpt2": dict(prompt_len=50, steps=900, budget=500, window=200),
    "tiny": dict(prompt_len=50, steps=1500, budget=500, window=200),
}


# -----------------------------------------------------------------------------
# Analytic counts: what one decode step must compute and read


def analytic(model: GPT, batch_size: int, predictor=None) -> dict:
    """Parameter and byte counts for the FLOPs and roofline formulas (see the docstring)."""
    cfg = model.config
    elt = model.wte.weight.element_size()
    linear = sum(p.numel() for p in model.blocks.parameters() if p.dim() == 2)  # the blocks' Linear weights
    head = model.wte if model.head is None else model.head  # tied: the LM head is a matmul with the embedding
    lm_head = head.weight.numel()
    pred = sum(p.numel() for p in predictor.parameters() if p.dim() == 2) if predictor is not None else 0
    # Read per step: every block parameter, the LM head (which, tied, covers the embedding rows
    # looked up), the final norm, one learned-position row (none with RoPE).
    read = sum(p.numel() for p in model.blocks.parameters()) + lm_head + sum(p.numel() for p in model.ln_f.parameters())
    return dict(
        matmul_params=linear + lm_head,
        predictor_matmul_params=pred,
        weight_bytes=(read + (cfg.n_embd if cfg.positions == "learned" else 0)) * elt,
        predictor_bytes=sum(p.numel() for p in predictor.parameters()) * elt if predictor is not None else 0,
        kv_slot_bytes=cfg.n_layer * 2 * batch_size * cfg.n_kv_head * cfg.head_dim * elt,  # one slot, all rows
        attn_flops_per_slot=4 * cfg.n_layer * cfg.n_head * cfg.head_dim,  # QK^T + AV, one token, one slot
    )


def flops_per_token(a: dict, live: int, with_predictor: bool) -> float:
    """2 N_matmul + 4 n_layer n_head head_dim S (+ 2 N_predictor): Kaplan et al. 2020 Table 1, PaLM App. B."""
    predictor = 2 * a["predictor_matmul_params"] if with_predictor else 0
    return 2 * a["matmul_params"] + a["attn_flops_per_slot"] * live + predictor


def bytes_per_step(a: dict, live: int, with_predictor: bool) -> int:
    """Bytes a decode step must read at least: every weight once, and the live keys and values."""
    return a["weight_bytes"] + (a["predictor_bytes"] if with_predictor else 0) + live * a["kv_slot_bytes"]


# -----------------------------------------------------------------------------
# Measuring


class Clock:
    """Timestamps on the device's own timeline: CUDA events on a GPU (recording one does not wait
    for the GPU), time.perf_counter on a CPU (which runs each op before returning)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def stamp(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        """Rounded to 0.1 us, finer than either clock resolves (keeps the JSON small)."""
        return round(start.elapsed_time(end) / 1e3 if self.cuda else end - start, 7)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read plus bytes written (median of 10)."""
    src = torch.randn(nbytes // 4, device=device)  # random, not zeros: zeros can run faster
    dst = torch.empty_like(src)
    clock, times = Clock(device), []
    for i in range(13):
        t0 = clock.stamp()
        dst.copy_(src)
        t1 = clock.stamp()
        clock.sync()
        if i >= 3:  # warm-up
            times.append(clock.seconds(t0, t1))
    del src, dst
    return 2 * nbytes / sorted(times)[len(times) // 2]


# -----------------------------------------------------------------------------
# The decode loop, timed step by step


@torch.no_grad()
def profile_policy(model: GPT, policy: dynts.Policy, prompt: torch.Tensor, steps: int, special_ids: torch.Tensor,
                   marks: list[int], on_mark=None, cuda_graphs: bool = False) -> dict:
    """Prefill `prompt` (B, P), then decode `steps` tokens greedily under `policy`, as generate.py does.

    Each decode step is timed from the start of its forward to the start of the next one: the
    forward, the policy's scoring (the predictor, for DynTS), the selection and compaction when
    the cache is full, and the sampling. Returns per-step arrays and, at each mark, the peak
    memory allocated while decoding so far: the peak is reset after the prefill, so it holds the
    cache, each step's activations and each compaction's copy in flight; `base_alloc_bytes`
    (allocated before the cache: the weights) is subtracted in the reports. `on_mark(step,
    record)` is called at each mark (after a sync).
    """
    device = prompt.device
    B, P = prompt.shape
    capacity = policy.budget if policy.budget is not None else P + steps
    keep = keep_in_place if cuda_graphs else KVCache.keep  # compaction: no copy in flight on the fast path
    warm_up_eviction(policy, model, B, keep)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base_alloc = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    cache = KVCache(model.config, B, capacity, device=device, dtype=model.wte.weight.dtype)
    policy.reset(B, capacity, device)
    clock = Clock(device)
    rec = dict(policy=policy.name, budget=policy.budget, window=policy.window, ratio=policy.ratio,
               kv_buffer_bytes=cache.kv.numel() * cache.kv.element_size(), cache_buffer_bytes=cache.allocated_bytes(),
               evictions=0, kv_read=[], kv_held=[],
               step_s=[], policy_s=[], peak_alloc_bytes={},
               base_alloc_bytes=base_alloc if device.type == "cuda" else None)
    forward, observe = model, policy.observe
    fwd_end, pol_end = [], []

    def step(tokens):  # as in generate.py: forward, the policy's bookkeeping, an eviction when due
        logits, hidden, attn = forward(tokens, cache, need_attn=policy.needs_attention)
        fwd_end.append(clock.stamp())
        positions = torch.arange(cache.seen - tokens.shape[1], cache.seen, device=device)
        observe(tokens, hidden, positions, attn)
        rec["kv_read"].append(cache.length)
        if policy.should_evict(cache.length):
            idx = policy.select(cache)  # (B, n_keep)
            keep(cache, idx)
            policy.keep(idx)
            rec["evictions"] += 1
        rec["kv_held"].append(cache.length)
        pol_end.append(clock.stamp())
        return logits

    def sample(logits):  # greedy, never a special token: the trace never ends its thinking
        return logits.index_fill_(1, special_ids, float("-inf")).argmax(dim=-1, keepdim=True)  # (B, 1)

    clock.sync()
    t0 = time.perf_counter()
    token = sample(step(prompt))  # prefill
    clock.sync()
    rec["prefill_s"] = time.perf_counter() - t0
    fwd_end.clear(), pol_end.clear(), rec["kv_read"].clear(), rec["kv_held"].clear()
    if cuda_graphs:  # the fast path: capture the decode step and the scoring once the cache holds the prompt
        t0 = time.perf_counter()
        forward = GraphedDecode(model, cache)
        observe = GraphedObserve(policy, forward)
        rec["capture_s"] = time.perf_counter() - t0
    if device.type == "cuda":  # the prefill's activations are gone: from here on, decoding's peak
        rec["prefill_peak_alloc_bytes"] = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    def collect(i):  # the step and policy times of steps up to i not yet collected (after a sync)
        n = len(rec["step_s"])
        rec["step_s"] += [clock.seconds(a, b) for a, b in zip(starts[n:i], starts[n + 1:i + 1])]
        rec["policy_s"] += [clock.seconds(a, b) for a, b in zip(fwd_end[n:i], pol_end[n:i])]

    starts = [clock.stamp()]
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        token = sample(step(token))
        starts.append(clock.stamp())
        if i in marks:
            if device.type == "cuda":
                rec["peak_alloc_bytes"][i] = torch.cuda.max_memory_allocated()
            if on_mark:
                clock.sync()
                collect(i)
                on_mark(i, rec)
    clock.sync()
    rec["wall_s"] = time.perf_counter() - t0
    collect(steps)
    del forward, observe, cache
    return rec


def warm_up_eviction(policy: dynts.Policy, model: GPT, batch_size: int, keep=KVCache.keep):
    """One selection and one compaction on scratch data of the real sizes, so that loading their
    kernels (a one-time cost, like the forward's warm-up) stays out of the timed steps."""
    if policy.budget is None:
        return
    device, dtype = model.wte.weight.device, model.wte.weight.dtype
    scratch = copy.copy(policy)  # the real policy's scores stay untouched
    scratch.scores, scratch.length = torch.rand(batch_size, policy.budget, device=device), policy.budget
    scratch.positions = torch.arange(policy.budget, device=device).repeat(batch_size, 1)
    cache = KVCache(dataclasses.replace(model.config, n_layer=1), batch_size, policy.budget, device, dtype)
    cache.length = policy.budget
    idx = scratch.select(cache)
    keep(cache, idx)
    scratch.keep(idx)


# -----------------------------------------------------------------------------
# Reporting


def mark_row(rec: dict, a: dict, step: int, batch: int, bandwidth: float, window: int) -> dict:
    """The numbers at one mark: throughput and roofline over the `window` steps up to `step`."""
    with_pred = rec["policy"] == "dynts"
    lo = max(0, step - window)
    seconds = sum(rec["step_s"][lo:step])
    roof = sum(bytes_per_step(a, s, with_pred) for s in rec["kv_read"][lo:step]) / bandwidth
    peak = rec["peak_alloc_bytes"].get(step)
    return dict(
        step=step,
        tokens_per_s=batch * (step - lo) / seconds,
        roofline_tokens_per_s=batch * (step - lo) / roof,
        roofline_fraction=roof / seconds,
        bytes_per_step=sum(bytes_per_step(a, s, with_pred) for s in rec["kv_read"][lo:step]) / (step - lo),
        kv_read=rec["kv_read"][step - 1],
        kv_held=rec["kv_held"][step - 1],
        kv_live_gb=rec["kv_held"][step - 1] * a["kv_slot_bytes"] / 1e9,
        kv_buffer_gb=rec["kv_buffer_bytes"] / 1e9,
        peak_alloc_gb=peak / 1e9 if peak is not None else None,
        peak_above_weights_gb=(peak - rec["base_alloc_bytes"]) / 1e9 if peak is not None else None,
        gflops_per_token=flops_per_token(a, rec["kv_read"][step - 1], with_pred) / 1e9,
        policy_share=sum(rec["policy_s"][lo:step]) / seconds,
    )


ROW_FMT = "{step:>6} {tokens_per_s:>9.1f} {roofline_tokens_per_s:>9.1f} {roof_pct:>6.1f}% {kv_held:>7} {kv_live_gb:>8.4g} " \
          "{kv_buffer_gb:>8.4g} {peak:>9} {gflops_per_token:>8.4g} {pol_pct:>7.2f}%"
ROW_HEAD = f"{'step':>6} {'tok/s':>9} {'roof t/s':>9} {'%roof':>7} {'KV tok':>7} {'KV GB':>8} " \
           f"{'buf GB':>8} {'alloc GB':>9} {'GFLOP/t':>8} {'policy':>8}"


def format_row(r: dict) -> str:
    # alloc: the peak allocated while decoding, less the weights
    peak = f"{r['peak_above_weights_gb']:.3f}" if r["peak_alloc_gb"] is not None else "-"
    return ROW_FMT.format(**r, roof_pct=100 * r["roofline_fraction"], pol_pct=100 * r["policy_share"], peak=peak)


def multipliers(rows: dict, base: str = "full") -> dict:
    """policy / base at each common mark: throughput, live KV, buffers, GFLOPs, and how much of the
    speed-up that the ratio of bytes read allows is achieved."""
    out = {}
    for name, rs in rows.items():
        if name == base:
            continue
        by_step = {r["step"]: r for r in rows[base]}
        out[name] = []
        for r in rs:
            f = by_step.get(r["step"])
            if f is None:
                continue
            speedup, allowed = r["tokens_per_s"] / f["tokens_per_s"], f["bytes_per_step"] / r["bytes_per_step"]
            out[name].append(dict(step=r["step"], throughput=speedup, kv_live=r["kv_live_gb"] / f["kv_live_gb"],
                                  kv_buffer=r["kv_buffer_gb"] / f["kv_buffer_gb"],
                                  gflops=r["gflops_per_token"] / f["gflops_per_token"],
                                  bytes_allowed_speedup=allowed, speedup_efficiency=speedup / allowed))
    return out


def format_multipliers(name: str, ms: list[dict], base: str = "full") -> str:
    paper = name == "dynts"
    lines = [f"{name} / {base}:",
             f"{'step':>6} {'tput':>7} {'KV live':>8} {'KV buf':>7} {'GFLOPs':>7} {'bytes ratio':>11} {'of allowed':>10}"
             + ("   paper: tput  KV  GFLOPs" if paper else "")]
    for m in ms:
        line = (f"{m['step']:>6} {m['throughput']:>6.2f}x {m['kv_live']:>7.2f}x {m['kv_buffer']:>6.2f}x "
                f"{m['gflops']:>6.2f}x {m['bytes_allowed_speedup']:>10.2f}x {100 * m['speedup_efficiency']:>9.1f}%")
        if paper and m["step"] in PAPER_MARKS:
            j = PAPER_MARKS.index(m["step"])
            line += "   " + "  ".join(f"{PAPER_MULTIPLIERS[k][j]:.2f}x" if PAPER_MULTIPLIERS[k][j] else "-"
                                      for k in ("throughput", "kv_memory", "gflops"))
        lines.append(line)
    return "\n".join(lines)


def plot(result: dict, path: str):
    """The three-panel figure of a run's result (this file's JSON): view.plot_profile, with the formulas above."""
    view.plot_profile(result, path, flops_per_token, bytes_per_step, PAPER_MARKS)


# -----------------------------------------------------------------------------
# Command line


def main(preset="paper-8b", policies="full,dynts", batch_size=8, prompt_len=None, steps=None, budget=None,
         window=None, ratio=0.3, device=None, dtype="auto", cuda_graphs=False, every=1000, tput_window=100,
         seed=1337, json_path=None, plot_path=None, out=sys.stdout) -> dict:
    """Profile each policy on the same random prompt; print the tables; return everything."""
    if preset not in PRESETS:
        raise UsageError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    d = DEFAULTS.get(preset, DEFAULTS["tiny"])
    prompt_len = d["prompt_len"] if prompt_len is None else prompt_len
    steps = d["steps"] if steps is None else steps
    budget = d["budget"] if budget is None else budget
    window = d["window"] if window is None else window
    names = [p.strip() for p in policies.split(",") if p.strip()]
    for name in names:
        if name not in POLICIES:
            raise UsageError(f"--policies: unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    if not names or len(set(names)) != len(names):
        raise UsageError(f"--policies {policies!r}: name each policy once")
    for flag, value in [("--batch-size", batch_size), ("--prompt-len", prompt_len), ("--steps", steps),
                        ("--every", every), ("--tput-window", tput_window)]:
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if prompt_len + steps > cfg.block_size:
        raise UsageError(f"--prompt-len {prompt_len} plus --steps {steps} exceeds the block_size {cfg.block_size} "
                         f"of --preset {preset}")
    if cuda_graphs and any(name in NEEDS_ATTENTION for name in names):
        raise UsageError(f"--cuda-graphs: {next(n for n in names if n in NEEDS_ATTENTION)} scores by attention "
                         "weights; profile it without graphs")
    device = resolve_device(device)
    if cuda_graphs and not device.startswith("cuda"):
        raise UsageError("--cuda-graphs needs a CUDA device")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    check_output_path("--json", json_path)  # (checked now, not after the whole run)
    check_output_path("--plot", plot_path)
    check_matplotlib("--plot", plot_path)
    if any(name != "full" for name in names) and budget <= prompt_len:
        raise UsageError(f"--budget {budget} must exceed the prompt's {prompt_len} tokens")
    capacity = prompt_len + steps if "full" in names else budget  # the largest cache a policy allocates
    check_memory(f"--preset {preset} (built in float32) and a KV cache of --batch-size {batch_size} x {capacity} slots",
                 weight_bytes(cfg) + cache_bytes(cfg, batch_size, capacity, getattr(torch, dtype).itemsize), str(device))
    device = torch.device(device)
    torch.manual_seed(seed)
    enc = get_encoding()
    special_ids = torch.tensor([enc.encode_single_token(t) for t in (EOT, THINK, END_THINK)], device=device)
    prompt = torch.randint(0, 256, (batch_size, prompt_len)).to(device)  # random bytes: no special token

    # Validate the policies' settings before spending time on the model.
    for name in names:
        make_policy(name, budget, window, ratio, None, prompt_len, enc)
    with torch.device(device):
        model = GPT(cfg).to(getattr(torch, dtype)).eval()
        if cfg.positions == "rope":  # RoPE's frequencies stay float32, as hf.load_model keeps them (.to rounds buffers)
            model.inv_freq = rope_frequencies(cfg)
        predictor = dynts.ImportancePredictor(cfg.n_embd).to(getattr(torch, dtype)).eval() if "dynts" in names else None
    a = analytic(model, batch_size, predictor)
    bandwidth = copy_bandwidth(device, 2 ** 31 if device.type == "cuda" else 2 ** 26)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    marks = sorted({m for m in PAPER_MARKS if m <= steps} | set(range(every, steps + 1, every)) | {steps})
    result = dict(
        command="python profile.py " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("profile.py") else None,
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), device_name=device_name,
        torch=torch.__version__,
        config=dict(preset=preset, policies=names, batch_size=batch_size, prompt_len=prompt_len, steps=steps,
                    budget=budget, window=window, ratio=ratio, device=str(device), dtype=dtype,
                    cuda_graphs=cuda_graphs, every=every, tput_window=tput_window, seed=seed),
        analytic=a, copy_bandwidth_Bps=bandwidth, marks={}, records={}, multipliers={})
    print(f"profile.py: {preset} ({a['matmul_params'] / 1e6:.1f} M matmul params), batch {batch_size}, prompt "
          f"{prompt_len}, {steps} steps, {dtype} on {device_name}{' with CUDA graphs' if cuda_graphs else ''}\n"
          f"copy bandwidth {bandwidth / 1e12:.3f} TB/s (read + write) | weights read per step "
          f"{a['weight_bytes'] / 1e9:.4g} GB | KV per slot {a['kv_slot_bytes'] / 2**20:.3f} MiB (all {batch_size} rows)",
          file=out, flush=True)

    def write_json():
        if json_path:
            with open(json_path, "w") as f:
                json.dump(result, f)

    for name in names:
        policy = make_policy(name, budget, window, ratio, predictor, prompt_len, enc)
        print(f"\n{name}" + (f" (budget {budget}, window {window}, ratio {ratio})" if name != "full" else "")
              + "\n" + ROW_HEAD, file=out, flush=True)
        rows = result["marks"][name] = []

        def on_mark(step, rec):
            rows.append(mark_row(rec, a, step, batch_size, bandwidth, tput_window))
            print(format_row(rows[-1]), file=out, flush=True)

        rec = profile_policy(model, policy, prompt, steps, special_ids, marks, on_mark, cuda_graphs)
        share = sum(rec["policy_s"]) / sum(rec["step_s"])
        print(f"prefill {rec['prefill_s']:.3f} s | {steps} steps in {rec['wall_s']:.2f} s "
              f"({batch_size * steps / rec['wall_s']:.1f} tokens/s) | evictions {rec['evictions']} | "
              f"policy (predictor, selection, compaction) {100 * share:.2f}% of decode time", file=out, flush=True)
        rec["policy_share"] = share
        result["records"][name] = rec
        write_json()
    if "full" in names and len(names) > 1:
        result["multipliers"] = multipliers(result["marks"])
        for name, ms in result["multipliers"].items():
            print("\n" + format_multipliers(name, ms), file=out, flush=True)
    write_json()
    if plot_path:
        plot(result, plot_path)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper-8b", help=f"model shape, random weights: {', '.join(PRESETS)} "
                   "(default: paper-8b, the shape of R1-Distill-Llama-8B)")
    p.add_argument("--policies", default="full,dynts", help=f"comma-separated, from {', '.join(POLICIES)} "
                   "(default: full,dynts; multipliers are against full)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences decoded together (default: 8)")
    p.add_argument("--prompt-len", type=int, help="random prompt tokens, protected by DynTS "
                   "(default: 500 for paper-8b, 50 for the small presets)")
    p.add_argument("--steps", type=int, help="decode steps (default: 15000 for paper-8b, 1500 for tiny)")
    p.add_argument("--budget", type=int, help="evict when the cache holds this many tokens (default: the paper's 5000 "
                   "for paper-8b, 500 for the small presets)")
    p.add_argument("--window", type=int, help="the most recent tokens, always kept (default: the paper's 2000 for "
                   "paper-8b, 200 for the small presets)")
    p.add_argument("--ratio", type=float, default=0.3,
                   help="fraction of the older tokens kept at an eviction (default: 0.3)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when there is one)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="weights and KV cache (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--cuda-graphs", action="store_true", help="replay each decode step as one CUDA graph with a "
                   "split-KV attention kernel (fastpath.py; CUDA only, its kernels need Triton; the plain path is "
                   "GPT.forward)")
    p.add_argument("--every", type=int, default=1000, help="report every this many steps, besides the paper's "
                   "marks 2k, 5k, 7k, 10k, 12k, 15k (default: 1000)")
    p.add_argument("--tput-window", type=int, default=100, help="throughput at a mark is over this many steps up "
                   "to it (default: 100)")
    p.add_argument("--seed", type=int, default=1337, help="random seed (weights and prompt)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="write everything measured, per step, as JSON")
    p.add_argument("--plot", dest="plot_path", metavar="PATH",
                   help="write the three-panel figure as a PNG (needs matplotlib)")
    return p.parse_args(argv)


def cli(argv=None):
    run_cli("profile.py", main, parse_args, argv)


if __name__ == "__main__":
    cli()
