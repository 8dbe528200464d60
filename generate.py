"""Generate under a KV-cache policy: `python generate.py --dynts`.

One decode step (`step`): the model reads the new token into the cache -> the policy scores
it -> when the cache holds `budget` slots, the policy evicts (dynts.Policy.evict: select, compact,
move the scores along). `generate` prefills the prompt, then samples a token from the step's
logits and runs the step again, in plain sight. The speed layer (`--cuda-graphs`), the pages
(`--html`, `--plot`) and real checkpoints (`--hf`) are imported only when asked for.
"""

import argparse
import codecs
import json
import sys
import time

import torch

from dynts import Policy
from lab import task
from lab.checkpoint import load_hf_weights, open_model
from lab.cli import UsageError, cache_bytes, check_memory, resolve_device, run_cli
from lab.flags import check_flags, check_lengths, policy_names, warn_prompt_fills_older
from lab.policies import NAMES, PerHead, make_policy, uses_ratio
from model import GPT, PRESETS, KVCache


def sample(logits, temperature: float, top_k: int | None, generator=None) -> torch.Tensor:
    """Next tokens (B, 1) from logits (B, vocab): greedy when temperature == 0."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


@torch.no_grad()
def step(model: GPT, cache: KVCache, policy: Policy, tokens: torch.Tensor, graphs=None):
    """One step: the model reads tokens (B, T) into the cache, the policy scores them, and a
    full cache evicts. Returns the last position's logits (B, vocab) and the eviction (the kept
    slots and their ranking: Policy.evict), or None. The logits were computed on the whole
    cache, before the eviction: an eviction changes what the next step reads. `graphs`: the same
    forward and scoring, replayed as CUDA graphs (lab/fastpath.py)."""
    forward, observe = graphs or (model, policy.observe)
    logits, hidden, attention = forward(tokens, cache, need_attention=policy.needs_attention)
    positions = cache.pos[:, cache.length - tokens.shape[1]:cache.length]  # (B, T): a view, no copy
    observe(tokens, hidden, positions, attention)
    eviction = policy.evict(cache) if policy.should_evict(cache.length) else None
    return logits, eviction


@torch.no_grad()
def generate(model: GPT, prompt, policy: Policy, max_new_tokens: int, num_samples: int = 1,
             temperature: float = 0.0, top_k: int | None = None, eot_id: int | None = None,
             vocab_limit: int | None = None, generator=None, on_token=None, on_step=None,
             check_every: int = 1, cuda_graphs: bool = False):
    """Sample continuations under a cache policy: `num_samples` of one prompt (a list of ids),
    or one of each prompt of a tensor (B, P) or a list of id lists, all of one length.

    Returns (new tokens (B, N) long, stats dict). A row stops at `eot_id` (then pads with it);
    the loop stops when every row has. `on_token(token_of_row_0)` and `on_step(cache, eviction)`
    after each step let a caller show progress. Logits at ids >= vocab_limit (beyond the
    tokenizer) are never sampled. `check_every` > 1 asks whether every row has finished only
    every that many steps (asking makes the CPU wait for the GPU); the tokens are cut where the
    last row finished. `cuda_graphs`: lab/fastpath.py, for policies that need no attention.
    """
    device = model.wte.weight.device
    rows = prompt.tolist() if torch.is_tensor(prompt) else list(prompt)
    rows = [rows] * num_samples if not rows or isinstance(rows[0], int) else rows
    if not all(rows) or len({len(row) for row in rows}) != 1:
        raise ValueError("prompts must be non-empty and of one length (group prompts by length: lab/eval.py does)")
    prompt = torch.tensor(rows, device=device)  # (B, P)
    (B, P), config = prompt.shape, model.config
    if cuda_graphs and policy.needs_attention:
        raise ValueError(f"--cuda-graphs: policy {policy.name} scores by attention weights; run it without graphs")
    capacity = policy.budget if policy.budget is not None else P + max_new_tokens
    cache = KVCache(config, B, capacity, device=device, dtype=model.wte.weight.dtype)
    policy.reset(B, capacity, device)
    stats = dict(policy=policy.name, batch=B, prompt_tokens=P, evictions=0, peak_kv_tokens=0, kv_token_steps=0,
                 kv_allocated_bytes=cache.allocated_bytes())
    graphs = None

    def run_step(tokens):
        logits, eviction = step(model, cache, policy, tokens, graphs)
        length = cache.length if eviction is None else eviction[1].shape[1]  # before the eviction (the ranking's width)
        stats["peak_kv_tokens"] = max(stats["peak_kv_tokens"], length)
        stats["kv_token_steps"] += length
        stats["evictions"] += eviction is not None
        if on_step:
            on_step(cache, eviction)
        if vocab_limit is not None and vocab_limit < logits.shape[-1]:
            logits[:, vocab_limit:] = float("-inf")
        return logits

    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    logits = run_step(prompt)  # the prefill
    if cuda_graphs:  # the speed layer, captured once the cache holds the prompt
        from lab import fastpath
        graphs = fastpath.capture(model, cache, policy)
    done = torch.zeros(B, 1, dtype=torch.bool, device=device)
    out = []
    for i in range(max_new_tokens):
        token = sample(logits, temperature, top_k, generator)  # (B, 1)
        if eot_id is not None:
            token = token.masked_fill(done, eot_id)  # finished rows pad with end-of-text
            done |= token == eot_id
        out.append(token)
        if on_token:
            on_token(int(token[0, 0]))
        if (eot_id is not None and (i + 1) % check_every == 0 and bool(done.all())) or i == max_new_tokens - 1:
            break
        logits = run_step(token)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = torch.cat(out, dim=1) if out else torch.zeros(B, 0, dtype=torch.long, device=device)
    if check_every > 1 and eot_id is not None and bool(done.all()):  # cut the steps after the last row finished
        tokens = tokens[:, :int((tokens == eot_id).int().argmax(dim=1).max()) + 1]
    stats.update(new_tokens=tokens.shape[1], seconds=seconds, tokens_per_s=B * tokens.shape[1] / seconds,
                 mean_kv_tokens=stats.pop("kv_token_steps") / max(1, len(out)),
                 peak_kv_live_bytes=cache.live_bytes(stats["peak_kv_tokens"]),
                 final_kv_tokens=cache.length, tokens_seen=cache.seen)
    return tokens, stats


# -----------------------------------------------------------------------------
# Command line


def main(policy="full", budget=None, window=None, ratio=None, prompt=None, problem=None, max_new_tokens=None,
         num_samples=1, temperature=None, top_k=None, seed=1337, device=None, dtype="auto",
         ckpt=None, init="ckpt", preset=None, hf=None, predictor_path=None, stats_json=None, html_path=None,
         plot_path=None, cuda_graphs=False, ignore_eot=False, out=None):
    """Run one generation per policy (`policy`: a name, or several, comma-separated) and print
    sample 0 as it is written, then a summary (and, on a terminal, the trace again with the
    evicted tokens dimmed). Returns the stats (a list of them, one per policy, for several). The
    model: `ckpt` (lab/train.py's; default ckpt/tiny-reasoner.pt), random weights of `preset`, or
    `hf`, a Hugging Face checkpoint folder with, for DynTS, `predictor_path` (lab/train.py --hf
    writes one). `html_path` / `plot_path`: every policy's trace on one page / one raster."""
    out = out or sys.stdout  # (read now: a default bound at import would miss a later redirect)
    names = policy_names(policy, "--policy")
    for name in names:  # each mistake one line, before any work (lab/flags.py)
        check_flags(name, budget, window, ratio, prompt, problem, temperature, seed, ckpt, init, preset, hf,
                    predictor_path, stats_json, html_path, plot_path, cuda_graphs)
    device = resolve_device(device)
    if cuda_graphs and not device.startswith("cuda"):
        raise UsageError(f"--cuda-graphs needs a CUDA device, not {device}")
    dtype = getattr(torch, ("bfloat16" if device.startswith("cuda") else "float32") if dtype == "auto" else dtype)
    torch.manual_seed(seed)

    model, predictor, config, enc, meta = open_model(ckpt, init, preset or "tiny", hf, predictor_path, device)
    the_problem = None
    if prompt is None and meta["task"] is None:
        prompt = "Question: how far back does the answer look? <think>"
    elif prompt is None:  # a held-out problem of the task the checkpoint was trained on
        the_problem = task.problems("eval", (problem or 0) + 1, **meta["task"])[problem or 0]
        prompt = the_problem.prompt
    if not prompt:
        raise UsageError("--prompt is empty")
    if hf is not None and not prompt.startswith(meta["bos"]):  # a question: into R1-Distill's chat format
        from lab.hf import chat_prompt
        ids = chat_prompt(prompt, enc, meta["bos"])
    else:
        ids = enc.encode(prompt, allowed_special="all")
    d = meta["decoding"]
    budget, window, ratio = [d[k] if v is None else v for k, v in (("budget", budget), ("window", window),
                                                                   ("ratio", ratio))]
    temperature = d.get("temperature", 0.0) if temperature is None else temperature  # the trained task's sampling
    if max_new_tokens is None:  # up to the model's last position (a random model: 512 tokens, --hf: 32768 at most)
        max_new_tokens = config.block_size - len(ids)
        if init == "random" or hf is not None:
            max_new_tokens = min(512 if hf is None else 32768, max_new_tokens)
    policies = []
    for name in names:
        check_lengths(name, len(ids), config.block_size, budget, window, max_new_tokens, num_samples, top_k)
        policies.append(make_policy(name, budget, window, ratio, len(ids), predictor, enc, meta["end_think_id"],
                                    meta["eos_id"]))
        warn_prompt_fills_older(policies[-1], len(ids))
    if top_k is not None and temperature == 0:
        raise UsageError(f"--top-k {top_k} samples; at temperature 0 (greedy) it would be ignored: give --temperature")
    capacity = max(len(ids) + max_new_tokens if p.budget is None else p.budget for p in policies)
    nbytes = cache_bytes(config, num_samples, capacity, dtype.itemsize)
    what = f"--max-new-tokens {max_new_tokens}" if any(p.budget is None for p in policies) else f"--budget {budget}"
    check_memory(f"{what}: the KV cache of --num-samples {num_samples} x {capacity} slots", nbytes, device)

    if model is None:
        model = load_hf_weights(hf, config, device, dtype, also=nbytes)
    model.to(device=device, dtype=dtype).eval()
    if predictor is not None:
        predictor.to(device=device, dtype=dtype).eval()
    pictures = bool(html_path or plot_path or out.isatty())
    runs = []  # (stats, rows, log) per policy
    for pol in policies:
        if len(policies) > 1:
            out.write(f"== {pol.name} ==\n")
        runs.append(decode(model, enc, meta, ids, pol, max_new_tokens, num_samples, temperature, top_k, seed, device,
                           dtype, the_problem, cuda_graphs, ignore_eot, pictures, out))
    if pictures:
        from lab import view
        view.show([(stats, rows, log) for stats, rows, log in runs], model, enc, ids, meta, the_problem, out,
                  html_path, plot_path)
    all_stats = [stats for stats, _, _ in runs]
    if stats_json:
        with open(stats_json, "w") as f:
            json.dump(all_stats[0] if len(all_stats) == 1 else all_stats, f, indent=2)
    return all_stats[0] if len(all_stats) == 1 else all_stats


def decode(model, enc, meta, ids, pol, max_new_tokens, num_samples, temperature, top_k, seed, device, dtype,
           the_problem, cuda_graphs, ignore_eot, pictures, out):
    """One policy's generation, streamed: returns (stats, rows, log) where rows are the samples'
    tokens up to their end of text and log the lab.view.TraceLog (None without pictures)."""
    gen = torch.Generator(device=device).manual_seed(seed)  # every policy draws the same random numbers
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out.write(enc.decode(ids))
    log = None
    if pictures:  # only for the pictures
        from lab.view import TraceLog
        log = TraceLog(pol)
    kept_thinking = []  # older generated tokens each eviction kept (row 0)

    def on_step(cache, eviction):
        if log:
            log.on_step(cache, eviction)
        if eviction is not None:
            before, one = eviction[1].shape[1], eviction[1].shape[1] - cache.length == 1
            if not one or not kept_thinking:  # one token a step (H2O native): marked once
                out.write(f"[evict {before}->{cache.length}{', one a step from here' if one else ''}]")
            pos = cache.pos[0, :cache.length]  # generated, and older than the window
            kept_thinking.append(int(((pos >= len(ids)) & (pos < cache.seen - pol.window)).sum()))

    def on_token(t):  # stream sample 0, a character once its bytes are whole
        out.write(decoder.decode(enc.decode_single_token_bytes(t)))
        out.flush()

    tokens, stats = generate(model, ids, pol, max_new_tokens, num_samples, temperature, top_k,
                             eot_id=None if ignore_eot else meta["eos_id"], vocab_limit=enc.n_vocab, generator=gen,
                             on_token=on_token, on_step=on_step, cuda_graphs=cuda_graphs)
    stats.update(budget=pol.budget, window=pol.window, ratio=pol.ratio if uses_ratio(pol.name) else None,
                 device=device, dtype=str(dtype).removeprefix("torch."), older_thinking_kept=kept_thinking,
                 per_head=isinstance(pol, PerHead))  # each head keeps its own tokens: the summary counts one
    out.write("\n\n")
    rows = [row[:row.index(meta["eos_id"]) + 1] if meta["eos_id"] in row else row for row in tokens.tolist()]
    if the_problem is not None:
        correct = [task.check_answer(the_problem, enc.decode(row)) for row in rows]
        stats.update(expected_answer=the_problem.answer, correct=sum(correct) / len(correct))
        cut = "" if meta["eos_id"] in rows[0] else f" (cut off by --max-new-tokens {max_new_tokens} before its end)"
        out.write(f"expected answer: {the_problem.answer} | sample 0 is {'correct' if correct[0] else 'WRONG' + cut}"
                  + (f" | {sum(correct)}/{len(correct)} samples correct" if len(correct) > 1 else "") + "\n")
    out.write(summary(stats) + "\n")
    return stats, rows, log


def summary(s: dict) -> str:
    kept = s.get("older_thinking_kept")
    ratio = "" if s["ratio"] is None else f", ratio {s['ratio']}"  # (H2O's and R-KV's own schedules have none)
    return (f"policy {s['policy']} (budget {s['budget']}, window {s['window']}{ratio}) | "
            f"{s['batch']} x {s['new_tokens']} tokens generated | evictions {s['evictions']}"
            + (f" (each kept {min(kept)}" + (f"-{max(kept)}" if max(kept) > min(kept) else "")
               + " older thinking tokens" + (" in layer 0's kv head 0)" if s.get("per_head") else ")") if kept else "")
            + " | "
            f"peak KV {s['peak_kv_tokens']} tokens, {s['peak_kv_live_bytes'] / 2**20:.2f} MiB live, "
            f"{s['kv_allocated_bytes'] / 2**20:.2f} MiB allocated | {s['tokens_per_s']:.1f} tokens/s "
            f"on {s['device']} ({s['dtype']})")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policy", help=f"KV-cache policy, or several, comma-separated, decoded one "
                   f"after the other and drawn side by side: {', '.join(NAMES)} (default: full)")
    p.add_argument("--dynts", action="store_true", help="short for --policy dynts")
    p.add_argument("--budget", type=int, help="evict when the cache holds this many tokens (default: the checkpoint's)")
    p.add_argument("--window", type=int, help="the most recent tokens, always kept (default: the checkpoint's)")
    p.add_argument("--ratio", type=float, help="share of the older tokens an eviction keeps, the protected "
                   "prompt included, in (0, 1] (default: the checkpoint's)")
    p.add_argument("--prompt", help="the prompt text (special tokens such as <think> allowed); "
                   "default: a held-out problem of the checkpoint's task. With --hf: a question, put in "
                   "R1-Distill's chat format, or a whole prompt starting with the bos token")
    p.add_argument("--problem", type=int, help="which held-out problem to solve, 0-9999 (default: 0)")
    p.add_argument("--max-new-tokens", type=int, help="the most tokens to generate per sample "
                   "(default: up to the model's block_size)")
    p.add_argument("--num-samples", type=int, default=1, help="samples of the prompt, decoded as one batch")
    p.add_argument("--temperature", type=float,
                   help="sampling temperature; 0 is greedy (default: the checkpoint's, else 0)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens only")
    p.add_argument("--seed", type=int, default=1337, help="random seed (model init and sampling)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when there is one)")
    p.add_argument("--cuda-graphs", action="store_true", help="replay each decode step as one CUDA graph "
                   "(lab/fastpath.py; not for policies that score by attention weights)")
    p.add_argument("--ignore-eot", action="store_true", help="decode --max-new-tokens tokens even past the end of "
                   "text (for throughput runs: random weights write it at some step)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="weights and KV cache (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--ckpt", help="checkpoint from lab/train.py (default: ckpt/tiny-reasoner.pt)")
    p.add_argument("--init", choices=["ckpt", "random"], default="ckpt",
                   help="load --ckpt, or random weights of --preset (mechanics only)")
    p.add_argument("--preset", help=f"model shape for --init random: {', '.join(PRESETS)} (default: tiny)")
    p.add_argument("--hf", metavar="DIR", help="a Hugging Face checkpoint folder instead (Llama 3 / Qwen2: "
                   "R1-Distill); needs --prompt")
    p.add_argument("--predictor", dest="predictor_path", metavar="FILE", help="with --hf: the importance "
                   "predictor that `python -m lab.train --hf DIR` wrote (needed by dynts; gives the budget defaults)")
    p.add_argument("--stats-json", help="also write the summary as JSON to this path")
    p.add_argument("--html", dest="html_path", help="write a page of the trace (every policy's, side by side): "
                   "each token shaded by its score, the evicted ones struck through, a step control (self-contained)")
    p.add_argument("--plot", dest="plot_path", help="PNG raster of which tokens are in the cache at each step "
                   "(needs matplotlib)")
    args = p.parse_args(argv)
    if args.dynts and args.policy is not None:  # one would silently win
        raise UsageError(f"--dynts is short for --policy dynts: give one, not both (--policy {args.policy})")
    args.policy = "dynts" if args.dynts else args.policy or "full"
    del args.dynts
    return args


def cli(argv=None):
    run_cli("generate.py", main, parse_args, argv)


if __name__ == "__main__":
    cli()
