"""Generate with a KV-cache policy: `python generate.py --dynts`.

The decode loop is `generate()`: prefill the prompt, then one token at a time: forward ->
the policy scores the new slot -> when the cache holds `budget` slots, select what to keep and
compact the cache -> sample the next token. Eviction happens here, in plain sight.
"""

import argparse
import codecs
import json
import os
import sys
import time

import torch

import dynts
import task
import view
from cli import (UsageError, cache_bytes, check_matplotlib, check_memory, check_output_path, check_positive,
                 check_seed, resolve_device, run_cli, weight_bytes)
from model import END_THINK, EOT, GPT, PRESETS, GPTConfig, KVCache, get_encoding

DEFAULT_CKPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ckpt", "tiny-reasoner.pt")
BASELINES = ["window", "streaming", "sepllm", "h2o", "h2o-last", "snapkv", "rkv"]  # "+p": the prompt protected too
ABLATIONS = ["dynts-random", "dynts-bottom", "dynts-noprompt", "random-all", "bottom-all", "noquestion"]
POLICIES = ["full", "dynts"] + BASELINES + [b + "+p" for b in BASELINES] + ABLATIONS


# -----------------------------------------------------------------------------
# Loading


def load_checkpoint(path: str, device="cpu", flag: str = "--ckpt"):
    """(model, predictor, meta) from a checkpoint written by train.py; meta holds the
    encoding's name, the task's settings, the decoding defaults and the training metrics."""
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path}: no such file (train one with `python train.py`, "
                         "or use --init random --preset tiny for a mechanics-only run)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        config = GPTConfig(**ckpt["config"])
        model = GPT(config)
        model.load_state_dict(ckpt["model"])
        predictor = dynts.ImportancePredictor(config.n_embd)
        predictor.load_state_dict(ckpt["predictor"])
        meta = dict(encoding=ckpt["encoding"], task=ckpt["task"], decoding=ckpt["decoding"],
                    metrics=ckpt.get("metrics", {}))
        get_encoding(meta["encoding"])
        check_fields(meta)
        for name, tensor in list(ckpt["model"].items()) + list(ckpt["predictor"].items()):
            if not torch.isfinite(tensor).all():
                raise ValueError(f"the weights {name!r} are not finite")
    except Exception as e:  # truncated, another format, another config: one line, naming the file
        first = (str(e).splitlines() or [""])[0]  # (some exceptions have no message)
        raise UsageError(f"{flag} {path}: not a checkpoint of this project ({type(e).__name__}"
                         + (f": {first}" if first else "") + ")") from None  # the whole first line
    return model, predictor, meta


def check_fields(meta: dict):
    """The checkpoint's settings have the types generate.py and eval.py rely on."""
    if not isinstance(meta["task"], dict):
        raise ValueError(f"the field 'task' must be a dict of task.py settings, got {type(meta['task']).__name__}")
    d = meta["decoding"]
    for field, kind in [("budget", int), ("window", int), ("ratio", (int, float))]:
        if not isinstance(d, dict) or not isinstance(d.get(field), kind) or isinstance(d.get(field), bool):
            raise ValueError(f"the field 'decoding.{field}' is missing or not a number")


def make_policy(name, budget, window, ratio, predictor=None, prompt_len=0, enc=None) -> dynts.Policy:
    """A policy by name. A baseline's name + "+p" protects the prompt as DynTS does (the
    paper's baselines did not)."""
    if name == "full":
        return dynts.Full()
    base, protect = name.removesuffix("+p"), name.endswith("+p")
    p = prompt_len if protect else 0
    if base in BASELINES:
        if base == "sepllm":
            separators = [enc.encode_single_token(c) for c in dynts.SepLLM.SEPARATORS]
            return dynts.SepLLM(budget, window, ratio, separators, prompt_len=p)
        kind = {"window": dynts.Window, "streaming": dynts.StreamingLLM, "h2o": dynts.H2O, "h2o-last": dynts.H2OLast,
                "snapkv": dynts.SnapKV, "rkv": dynts.RKV}[base]
        return kind(budget, window, ratio, prompt_len=p)
    if name == "dynts" or name in ABLATIONS:
        kind = {"dynts": dynts.DynTS, "dynts-random": dynts.RandomThinking, "dynts-bottom": dynts.BottomK,
                "dynts-noprompt": dynts.NoProtectedPrompt, "random-all": dynts.RandomAll,
                "bottom-all": dynts.BottomAll, "noquestion": dynts.NoQuestion}[name]
        return kind(budget, window, ratio, predictor, prompt_len,
                    end_think_id=enc.encode_single_token(END_THINK), eot_id=enc.eot_token)
    raise UsageError(f"--policy {name!r}: choose one of {', '.join(POLICIES)}")


# -----------------------------------------------------------------------------
# Decoding


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
def generate(model: GPT, prompt, policy: dynts.Policy, max_new_tokens: int,
             num_samples: int = 1, temperature: float = 0.0, top_k: int | None = None,
             eot_id: int | None = None, vocab_limit: int | None = None, generator=None,
             on_token=None, on_evict=None, on_step=None, log=None):
    """Sample continuations under a cache policy: `num_samples` of one prompt (a list of ids),
    or one of each row of prompts (B, P), all of one length.

    Returns (new tokens (B, N) long, stats dict). A row stops at `eot_id`; the loop stops when
    every row has. `on_token(token_of_row_0)`, `on_step(cache_length)` after each forward and
    `on_evict(before, cache)` let a caller show progress (and tests look at the cache); `log`, a
    view.TraceLog, records what each eviction removed, for the pictures. Logits at ids >=
    vocab_limit (beyond the tokenizer) are never sampled.
    """
    device = model.wte.weight.device
    config = model.config
    prompt = torch.as_tensor(prompt, device=device)
    prompt = prompt.expand(num_samples, -1) if prompt.dim() == 1 else prompt  # (B, P): one prompt per row
    B, P = prompt.shape
    capacity = policy.budget if policy.budget is not None else P + max_new_tokens
    cache = KVCache(config, B, capacity, device=device, dtype=model.wte.weight.dtype)
    policy.reset(B, capacity, device)
    need_attn = policy.needs_attention
    stats = dict(policy=policy.name, batch=B, prompt_tokens=P, evictions=0, peak_kv_tokens=0, kv_token_steps=0,
                 kv_allocated_bytes=cache.allocated_bytes())

    def step(tokens):  # one forward, then the policy's bookkeeping and, when due, an eviction
        logits, hidden, attn = model(tokens, cache, need_attn=need_attn)
        positions = torch.arange(cache.seen - tokens.shape[1], cache.seen, device=device)
        policy.observe(tokens, hidden, positions, attn)
        stats["peak_kv_tokens"] = max(stats["peak_kv_tokens"], cache.length)
        stats["kv_token_steps"] += cache.length  # for the mean cache length over the forwards
        if on_step:
            on_step(cache.length)
        if log:
            log.on_step(cache.length)
        if policy.should_evict(cache.length):
            before = cache.length
            idx = policy.select(cache)  # (B, n_keep)
            if log:
                log.on_select(cache, idx)
            cache.keep(idx)
            policy.keep(idx)
            stats["evictions"] += 1
            if on_evict:
                on_evict(before, cache)
        if vocab_limit is not None and vocab_limit < logits.shape[-1]:
            logits[:, vocab_limit:] = float("-inf")
        return logits

    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    logits = step(prompt)  # prefill
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
        if (eot_id is not None and bool(done.all())) or i == max_new_tokens - 1:
            break
        logits = step(token)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if log:
        log.finish(cache)
    tokens = torch.cat(out, dim=1) if out else torch.zeros(B, 0, dtype=torch.long, device=device)
    stats.update(new_tokens=tokens.shape[1], seconds=seconds, tokens_per_s=B * tokens.shape[1] / seconds,
                 mean_kv_tokens=stats.pop("kv_token_steps") / max(1, len(out)),
                 peak_kv_live_bytes=cache.live_bytes(stats["peak_kv_tokens"]),
                 final_kv_tokens=cache.length, tokens_seen=cache.seen)
    return tokens, stats


# -----------------------------------------------------------------------------
# Command line


def main(policy="full", budget=None, window=None, ratio=None, prompt=None, problem=None, max_new_tokens=None,
         num_samples=1, temperature=0.0, top_k=None, seed=1337, device=None, dtype="auto",
         ckpt=DEFAULT_CKPT, init="ckpt", preset="tiny", stats_json=None, html_path=None, plot_path=None,
         out=sys.stdout):
    """Run one generation and print sample 0 as it is written, then a summary (and, on a
    terminal, the trace again with the evicted tokens dimmed). Returns stats."""
    for flag, path in [("--stats-json", stats_json), ("--html", html_path), ("--plot", plot_path)]:
        check_output_path(flag, path)
    check_matplotlib("--plot", plot_path)
    check_seed(seed)
    if temperature != 0:  # 0 is greedy; anything else divides the logits
        check_positive("--temperature", temperature)
        if temperature < 1e-3:
            raise UsageError(f"--temperature {temperature}: use 0 for greedy, or at least 1e-3")
    if ratio is not None and not 0 < ratio <= 1:  # whatever the policy
        raise UsageError(f"--ratio must be in (0, 1], got {ratio}")
    if prompt is not None and problem is not None:
        raise UsageError("--prompt and --problem: give one (a problem is a prompt of the checkpoint's task)")
    if problem is not None and not 0 <= problem < 10**4:
        raise UsageError(f"--problem must be in [0, 10000), got {problem}")
    if policy == "full" and any(v is not None for v in (budget, window, ratio)):
        print("generate.py: note: --policy full never evicts; --budget, --window and --ratio are ignored",
              file=sys.stderr)
    device = resolve_device(device)
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    torch.manual_seed(seed)

    if init == "random":
        if preset not in PRESETS:
            raise UsageError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
        check_memory(f"--preset {preset} (built in float32)", weight_bytes(PRESETS[preset]), "cpu")
        model, predictor = GPT(PRESETS[preset]), dynts.ImportancePredictor(PRESETS[preset].n_embd)
        meta = dict(encoding="bytes-think", task=None, decoding=dict(budget=256, window=64, ratio=0.3))
    else:
        model, predictor, meta = load_checkpoint(ckpt)
    the_problem = None
    if prompt is None and meta["task"] is None:
        prompt = "Question: how far back does the answer look? <think>"
    elif prompt is None:  # a held-out problem of the task the checkpoint was trained on
        problem = problem or 0
        the_problem = task.problems("eval", problem + 1, **meta["task"])[problem]
        prompt = the_problem.prompt
    budget = meta["decoding"]["budget"] if budget is None else budget
    window = meta["decoding"]["window"] if window is None else window
    ratio = meta["decoding"]["ratio"] if ratio is None else ratio

    model.to(device=device, dtype=getattr(torch, dtype)).eval()
    predictor.to(device=device, dtype=getattr(torch, dtype)).eval()
    enc = get_encoding(meta["encoding"])
    ids = enc.encode(prompt, allowed_special="all")
    if not ids:
        raise UsageError("--prompt is empty")
    if len(ids) >= model.config.block_size:
        raise UsageError(f"--prompt: its {len(ids)} tokens leave no room below the model's block_size "
                         f"{model.config.block_size}")
    if max_new_tokens is None:  # up to the model's last position (a random model: 512 tokens at most)
        max_new_tokens = model.config.block_size - len(ids)
        if init == "random":
            max_new_tokens = min(512, max_new_tokens)
    for name, value, low in [("--max-new-tokens", max_new_tokens, 1), ("--num-samples", num_samples, 1),
                             ("--top-k", top_k, 1), ("--budget", budget, 1), ("--window", window, 0)]:
        if value is not None and value < low:
            raise UsageError(f"{name} must be >= {low}, got {value}")
    if temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {temperature}")
    if len(ids) + max_new_tokens > model.config.block_size:
        raise UsageError(f"--max-new-tokens {max_new_tokens} plus the prompt's {len(ids)} tokens exceeds "
                         f"the model's block_size {model.config.block_size}")
    if policy != "full" and len(ids) >= budget:
        raise UsageError(f"--budget {budget} must exceed the prompt's {len(ids)} tokens")
    pol = make_policy(policy, budget, window, ratio, predictor, len(ids), enc)
    capacity = pol.budget if pol.budget is not None else len(ids) + max_new_tokens
    check_memory(f"the KV cache of --num-samples {num_samples} x {capacity} slots",
                 cache_bytes(model.config, num_samples, capacity, getattr(torch, dtype).itemsize), device)

    gen = torch.Generator(device=device).manual_seed(seed)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out.write(prompt)
    on_token = lambda t: (out.write(decoder.decode(enc.decode_single_token_bytes(t))), out.flush())
    on_evict = lambda before, cache: out.write(f"[evict {before}->{cache.length}]")
    log = view.TraceLog(pol) if html_path or plot_path or out.isatty() else None  # only for the pictures
    tokens, stats = generate(model, ids, pol, max_new_tokens, num_samples, temperature, top_k,
                             eot_id=enc.eot_token, vocab_limit=enc.n_vocab, generator=gen,
                             on_token=on_token, on_evict=on_evict, log=log)
    stats.update(budget=pol.budget, window=pol.window, ratio=pol.ratio, device=device, dtype=dtype)
    out.write("\n\n")
    if the_problem is not None:
        correct = [task.check_answer(the_problem, enc.decode(row)) for row in tokens.tolist()]
        stats.update(expected_answer=the_problem.answer, correct=sum(correct) / len(correct))
        out.write(f"expected answer: {the_problem.answer} | sample 0 is {'correct' if correct[0] else 'WRONG'}"
                  + (f" | {sum(correct)}/{len(correct)} samples correct" if len(correct) > 1 else "") + "\n")
    out.write(summary(stats) + "\n")
    rows = [row[:row.index(enc.eot_token) + 1] if enc.eot_token in row else row for row in tokens.tolist()]
    pieces = [view.token_texts(enc, ids + row) for row in rows]  # each row's tokens, prompt first
    if log and out.isatty():  # the trace once more, the evicted tokens dimmed
        out.write("\n" + view.ansi(log, pieces[0]) + "\n")
    if html_path:
        verdicts = answers = None
        if the_problem is not None:
            answers = [the_problem.answer] * len(rows)
            verdicts = [f"expected {the_problem.answer}: {'correct' if task.check_answer(the_problem, enc.decode(r)) else 'WRONG'}"
                        for r in rows]
        with open(html_path, "w") as f:
            f.write(view.html(log, pieces, summary(stats), verdicts, answers))
    if plot_path:
        view.raster({pol.name: log}, len(pieces[0]), plot_path)
    if stats_json:
        with open(stats_json, "w") as f:
            json.dump(stats, f, indent=2)
    return stats


def summary(s: dict) -> str:
    return (f"policy {s['policy']} (budget {s['budget']}, window {s['window']}, ratio {s['ratio']}) | "
            f"{s['batch']} x {s['new_tokens']} tokens generated | evictions {s['evictions']} | "
            f"peak KV {s['peak_kv_tokens']} tokens, {s['peak_kv_live_bytes'] / 2**20:.2f} MiB live, "
            f"{s['kv_allocated_bytes'] / 2**20:.2f} MiB allocated | {s['tokens_per_s']:.1f} tokens/s "
            f"on {s['device']} ({s['dtype']})")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policy", choices=POLICIES, default="full", help="KV-cache policy (default: full)")
    p.add_argument("--dynts", dest="policy", action="store_const", const="dynts", help="short for --policy dynts")
    p.add_argument("--budget", type=int, help="evict when the cache holds this many tokens (default: the checkpoint's)")
    p.add_argument("--window", type=int, help="the most recent tokens, always kept (default: the checkpoint's)")
    p.add_argument("--ratio", type=float, help="fraction of the older tokens kept at an eviction, in (0, 1]")
    p.add_argument("--prompt", help="the prompt text (special tokens such as <think> allowed); "
                   "default: a held-out problem of the checkpoint's task")
    p.add_argument("--problem", type=int, help="which held-out problem to solve, 0-9999 (default: 0)")
    p.add_argument("--max-new-tokens", type=int, help="the most tokens to generate per sample "
                   "(default: up to the model's block_size)")
    p.add_argument("--num-samples", type=int, default=1, help="samples of the prompt, decoded as one batch")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 is greedy")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens only")
    p.add_argument("--seed", type=int, default=1337, help="random seed (model init and sampling)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when there is one)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="weights and KV cache (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--ckpt", default=DEFAULT_CKPT, help="checkpoint from train.py")
    p.add_argument("--init", choices=["ckpt", "random"], default="ckpt",
                   help="load --ckpt, or random weights of --preset (mechanics only)")
    p.add_argument("--preset", default="tiny", help=f"model shape for --init random: {', '.join(PRESETS)}")
    p.add_argument("--stats-json", help="also write the summary as JSON to this path")
    p.add_argument("--html", dest="html_path", help="write a page of the trace: each token shaded by its score, "
                   "the evicted ones greyed (self-contained HTML)")
    p.add_argument("--plot", dest="plot_path", help="PNG raster of which tokens are in the cache at each step "
                   "(needs matplotlib)")
    return p.parse_args(argv)


def cli(argv=None):
    run_cli("generate.py", main, parse_args, argv)


if __name__ == "__main__":
    cli()
