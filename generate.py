"""Generate with a KV-cache policy: `python generate.py --dynts`, or on a real checkpoint
`python generate.py --hf DeepSeek-R1-Distill-Qwen-1.5B --predictor pred.pt --dynts --prompt "..."`.

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
from pathlib import Path

import torch

import dynts
from lab import fastpath
from lab import hf as hf_loader
from lab import task
from lab import view
from lab.cli import (UsageError, cache_bytes, check_matplotlib, check_memory, check_output_path, check_positive,
                 check_seed, resolve_device, run_cli, weight_bytes)
from model import END_THINK, EOT, GPT, PRESETS, GPTConfig, KVCache, get_encoding

DEFAULT_CKPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ckpt", "tiny-reasoner.pt")
BASELINES = ["window", "streaming", "sepllm", "h2o", "h2o-last", "snapkv", "rkv"]  # "+p": the prompt protected too
ABLATIONS = ["dynts-random", "dynts-bottom", "dynts-noprompt", "random-all", "bottom-all", "noquestion"]
POLICIES = ["full", "dynts"] + BASELINES + [b + "+p" for b in BASELINES] + ABLATIONS
NEEDS_ATTENTION = [b + p for b in ("h2o", "h2o-last", "snapkv", "rkv") for p in ("", "+p")]  # (no --cuda-graphs)
NEEDS_PREDICTOR = ["dynts", "dynts-bottom", "dynts-noprompt", "bottom-all", "noquestion"]  # (the random ones do not)


# -----------------------------------------------------------------------------
# Loading


def load_checkpoint(path: str, device="cpu", flag: str = "--ckpt"):
    """(model, predictor, meta) from a checkpoint written by train.py; meta holds the
    encoding's name, the task's settings, the decoding defaults and the training metrics."""
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path}: no such file (train one with `python -m lab.train`, "
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
        raise UsageError(f"{flag} {path}: not a checkpoint of this project ({one_line(e)})") from None
    return model, predictor, meta


def one_line(e: Exception) -> str:
    """An exception's type and the whole first line of its message (some have none)."""
    first = (str(e).splitlines() or [""])[0]
    return type(e).__name__ + (f": {first}" if first else "")


def check_fields(meta: dict):
    """The checkpoint's settings have the types generate.py and eval.py rely on."""
    if not isinstance(meta["task"], dict):
        raise ValueError(f"the field 'task' must be a dict of task.py settings, got {type(meta['task']).__name__}")
    check_decoding(meta["decoding"])


def check_decoding(d):
    """The decoding defaults: budget, window and ratio, numbers."""
    for field, kind in [("budget", int), ("window", int), ("ratio", (int, float))]:
        if not isinstance(d, dict) or not isinstance(d.get(field), kind) or isinstance(d.get(field), bool):
            raise ValueError(f"the field 'decoding.{field}' is missing or not a number")


def load_predictor(path: str, config: GPTConfig, flag: str = "--predictor"):
    """(predictor, meta) from a predictor-only checkpoint, as `python -m lab.train --hf` writes it: kind
    "dynts-predictor", the config of the model it was trained on (it must be `config`), that
    model's folder, the predictor's weights, the label scale, the decoding defaults (budget,
    window, ratio) and the training metrics."""
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path}: no such file (train one with "
                         "`python -m lab.train --hf DIR --problems FILE.jsonl`)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("kind") != "dynts-predictor":
            raise ValueError("its kind is not 'dynts-predictor'")
        theirs = GPTConfig(**ckpt["config"])
        if theirs != config:
            field = next(f for f in vars(config) if getattr(config, f) != getattr(theirs, f))
            raise UsageError(f"{flag} {path}: a predictor for another model ({ckpt['model_dir']}: {field} "
                             f"{getattr(theirs, field)}, this one's is {getattr(config, field)})")
        predictor = dynts.ImportancePredictor(config.n_embd)
        predictor.load_state_dict(ckpt["predictor"])
        meta = dict(model_dir=ckpt["model_dir"], label_scale=ckpt["label_scale"], decoding=ckpt["decoding"],
                    metrics=ckpt.get("metrics", {}))
        check_decoding(meta["decoding"])
        for name, tensor in ckpt["predictor"].items():
            if not torch.isfinite(tensor).all():
                raise ValueError(f"the weights {name!r} are not finite")
    except UsageError:
        raise
    except Exception as e:  # truncated, another format: one line, naming the file
        raise UsageError(f"{flag} {path}: not a predictor checkpoint of this project ({one_line(e)})") from None
    return predictor, meta


def open_hf(folder: str):
    """hf.load_hf in two halves: (config, enc, meta) from the small files now (hf.open_hf), so
    that every setting is checked before the weights are read; `load_hf_weights` later."""
    if not Path(folder).is_dir():
        raise UsageError(f"--hf {folder}: not a folder (a Hugging Face checkpoint: config.json, *.safetensors, "
                         "tokenizer.json)")
    return hf_loader.open_hf(folder)


def load_hf_weights(folder: str, config: GPTConfig, device: str, dtype: torch.dtype, also: int = 0) -> GPT:
    """The other half: the weights, cast to dtype on device, once they and `also` bytes (the
    KV cache) are known to fit."""
    nbytes = weight_bytes(config, dtype.itemsize)
    check_memory(f"--hf {folder} ({str(dtype).removeprefix('torch.')} weights and the KV cache)", nbytes + also, device)
    return hf_loader.load_model(folder, config, device, dtype)


def make_policy(name, budget, window, ratio, predictor=None, prompt_len=0, enc=None, end_think_id=None,
                eot_id=None) -> dynts.Policy:
    """A policy by name. A baseline's name + "+p" protects the prompt as DynTS does (the
    paper's baselines did not). prompt_len: an int, or a list, one per row (a ragged batch).
    DynTS's `</think>` and end-of-text ids: the byte encoding's, unless given."""
    if name == "full":
        return dynts.Full()
    base, protect = name.removesuffix("+p"), name.endswith("+p")
    p = prompt_len if protect else 0
    if base in BASELINES:
        if base == "sepllm":
            separators = [enc.encode_single_token(c) for c in dynts.SepLLM.SEPARATORS]
            policy = dynts.SepLLM(budget, window, ratio, separators, prompt_len=p)
        else:
            kind = {"window": dynts.Window, "streaming": dynts.StreamingLLM, "h2o": dynts.H2O,
                    "h2o-last": dynts.H2OLast, "snapkv": dynts.SnapKV, "rkv": dynts.RKV}[base]
            policy = kind(budget, window, ratio, prompt_len=p)
        policy.name = name  # "h2o+p" in summaries and pictures, not the class's "h2o"
        return policy
    if name == "dynts" or name in ABLATIONS:
        kind = {"dynts": dynts.DynTS, "dynts-random": dynts.RandomThinking, "dynts-bottom": dynts.BottomK,
                "dynts-noprompt": dynts.NoProtectedPrompt, "random-all": dynts.RandomAll,
                "bottom-all": dynts.BottomAll, "noquestion": dynts.NoQuestion}[name]
        end_think_id = enc.encode_single_token(END_THINK) if end_think_id is None else end_think_id
        return kind(budget, window, ratio, predictor, prompt_len, end_think_id=end_think_id,
                    eot_id=enc.eot_token if eot_id is None else eot_id)
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
             on_token=None, on_evict=None, on_step=None, log=None, check_every: int = 1, cuda_graphs: bool = False):
    """Sample continuations under a cache policy: `num_samples` of one prompt (a list of ids),
    or one of each prompt of a list (of id lists, of any lengths) or a tensor (B, P).

    Returns (new tokens (B, N) long, stats dict). A row stops at `eot_id`; the loop stops when
    every row has. `on_token(token_of_row_0)`, `on_step(cache)` after each forward and
    `on_evict(before, cache)` let a caller show progress (and tests look at the cache); `log`, a
    view.TraceLog, records what each eviction removed, for the pictures. Logits at ids >=
    vocab_limit (beyond the tokenizer) are never sampled.

    `check_every` > 1 asks whether every row has finished only every that many steps: asking
    makes the CPU wait for the GPU, so each step's launches no longer overlap the step before
    (eval.py's batches). Up to check_every - 1 steps then run after the last row finished; the
    tokens are cut where it did, the stats and callbacks count every forward.

    `cuda_graphs`: decode steps replay one CUDA graph each (fastpath.py, the speed layer; on the
    CPU the same step runs eagerly, for tests), and so does the policy's scoring where it can;
    the cache compacts in place. Not for policies that score by attention weights, nor for
    prompts of different lengths (ValueError, before any work).
    """
    device = model.wte.weight.device
    config = model.config
    prompt = prompt.tolist() if torch.is_tensor(prompt) else prompt
    one = not prompt or isinstance(prompt[0], int)  # one prompt, or one per row
    rows = [list(prompt)] * num_samples if one else [list(row) for row in prompt]
    # Prompts of different lengths are left-padded, so that each row's next token goes into the
    # same slot; the cache gives the padding negative positions, and no real token attends to it.
    if not all(rows):
        raise ValueError("every prompt needs at least one token")
    P = max(len(row) for row in rows)
    pad = [P - len(row) for row in rows]
    prompt = torch.tensor([[0] * n + row for n, row in zip(pad, rows)], device=device)  # (B, P); id 0 never read
    B = len(rows)
    capacity = policy.budget if policy.budget is not None else P + max_new_tokens
    need_attn = policy.needs_attention
    if cuda_graphs and need_attn:
        raise ValueError(f"--cuda-graphs: policy {policy.name} scores by attention weights; run it without graphs")
    if cuda_graphs and any(pad):
        raise ValueError("--cuda-graphs: prompts of different lengths (a left-padded batch) run without graphs")
    cache = KVCache(config, B, capacity, device=device, dtype=model.wte.weight.dtype, pad=pad)
    policy.reset(B, capacity, device)
    forward, observe, keep = model, policy.observe, KVCache.keep  # the plain path; --cuda-graphs swaps them
    stats = dict(policy=policy.name, batch=B, prompt_tokens=P, evictions=0, peak_kv_tokens=0, kv_token_steps=0,
                 kv_allocated_bytes=cache.allocated_bytes())

    def step(tokens):  # one forward, then the policy's bookkeeping and, when due, an eviction
        logits, hidden, attn = forward(tokens, cache, need_attn=need_attn)
        positions = cache.pos[:, cache.length - tokens.shape[1]:cache.length]  # (B, T): each row's own
        observe(tokens, hidden, positions, attn)
        stats["peak_kv_tokens"] = max(stats["peak_kv_tokens"], cache.length)
        stats["kv_token_steps"] += cache.length  # for the mean cache length over the forwards
        if on_step:
            on_step(cache)
        if log:
            log.on_step(cache.length)
        if policy.should_evict(cache.length):
            before = cache.length
            idx = policy.select(cache)  # (B, n_keep); -1: a slot left empty (ragged batches, see dynts.py)
            if log:
                log.on_select(cache, idx)
            keep(cache, idx)
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
    if cuda_graphs:  # the fast path, from the first decode step: captured once the cache holds the prompt
        capture = device.type == "cuda"
        forward = fastpath.GraphedDecode(model, cache, capture=capture)
        if type(policy).observe is dynts.Policy.observe and policy.graph_safe:
            observe = fastpath.GraphedObserve(policy, forward, capture=capture)
        keep = fastpath.keep_in_place
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
        logits = step(token)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if log:
        log.finish(cache)
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
         num_samples=1, temperature=0.0, top_k=None, seed=1337, device=None, dtype="auto",
         ckpt=None, init="ckpt", preset="tiny", hf=None, predictor_path=None, stats_json=None, html_path=None,
         plot_path=None, cuda_graphs=False, ignore_eot=False, out=None):
    """Run one generation and print sample 0 as it is written, then a summary (and, on a
    terminal, the trace again with the evicted tokens dimmed). Returns stats. The model: `ckpt`
    (train.py's; default ckpt/tiny-reasoner.pt), random weights of `preset`, or `hf`, a Hugging
    Face checkpoint folder (hf.py) with, for DynTS, `predictor_path` (train.py --hf writes one)."""
    out = out or sys.stdout  # (read now: a default bound at import would miss a later redirect)
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
    if hf is not None:
        check_hf_settings(hf, ckpt, init, prompt, policy, predictor_path, budget, window)
    elif predictor_path is not None:
        raise UsageError("--predictor is for --hf models (a --ckpt checkpoint holds its own predictor)")
    if cuda_graphs and policy in NEEDS_ATTENTION:
        raise UsageError(f"--cuda-graphs: --policy {policy} scores by attention weights; run it without graphs")
    if policy == "full" and any(v is not None for v in (budget, window, ratio)):
        print("generate.py: note: --policy full never evicts; --budget, --window and --ratio are ignored",
              file=sys.stderr)
    device = resolve_device(device)
    if cuda_graphs and not device.startswith("cuda"):
        raise UsageError(f"--cuda-graphs needs a CUDA device, not {device}")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    torch.manual_seed(seed)

    model, predictor, config, enc, meta = open_model(ckpt, init, preset, hf, predictor_path, device)
    eos_id, end_think_id = meta["eos_id"], meta["end_think_id"]
    the_problem = None
    if prompt is None and meta["task"] is None:
        prompt = "Question: how far back does the answer look? <think>"
    elif prompt is None:  # a held-out problem of the task the checkpoint was trained on
        problem = problem or 0
        the_problem = task.problems("eval", problem + 1, **meta["task"])[problem]
        prompt = the_problem.prompt
    if hf is not None and not prompt.startswith(meta["bos"]):  # a question: into R1-Distill's chat format
        ids = hf_loader.chat_prompt(prompt, enc, meta["bos"])
    else:
        ids = enc.encode(prompt, allowed_special="all")
    budget = meta["decoding"]["budget"] if budget is None else budget
    window = meta["decoding"]["window"] if window is None else window
    ratio = meta["decoding"]["ratio"] if ratio is None else ratio

    if not ids or not prompt:
        raise UsageError("--prompt is empty")
    if len(ids) >= config.block_size:
        raise UsageError(f"--prompt: its {len(ids)} tokens leave no room below the model's block_size "
                         f"{config.block_size}")
    if max_new_tokens is None:  # up to the model's last position (a random model: 512 tokens, --hf: 32768 at most)
        max_new_tokens = config.block_size - len(ids)
        if init == "random" or hf is not None:
            max_new_tokens = min(512 if hf is None else 32768, max_new_tokens)
    for name, value, low in [("--max-new-tokens", max_new_tokens, 1), ("--num-samples", num_samples, 1),
                             ("--top-k", top_k, 1), ("--budget", budget, 1), ("--window", window, 0)]:
        if value is not None and value < low:
            raise UsageError(f"{name} must be >= {low}, got {value}")
    if temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {temperature}")
    if len(ids) + max_new_tokens > config.block_size:
        raise UsageError(f"--max-new-tokens {max_new_tokens} plus the prompt's {len(ids)} tokens exceeds "
                         f"the model's block_size {config.block_size}")
    if policy != "full" and len(ids) >= budget:
        raise UsageError(f"--budget {budget} must exceed the prompt's {len(ids)} tokens")
    pol = make_policy(policy, budget, window, ratio, predictor, len(ids), enc, end_think_id, eos_id)
    capacity = pol.budget if pol.budget is not None else len(ids) + max_new_tokens
    nbytes = cache_bytes(config, num_samples, capacity, getattr(torch, dtype).itemsize)
    check_memory(f"the KV cache of --num-samples {num_samples} x {capacity} slots", nbytes, device)

    if model is None:
        model = load_hf_weights(hf, config, device, getattr(torch, dtype), also=nbytes)
    model.to(device=device, dtype=getattr(torch, dtype)).eval()
    if predictor is not None:
        predictor.to(device=device, dtype=getattr(torch, dtype)).eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out.write(enc.decode(ids))
    on_token = lambda t: (out.write(decoder.decode(enc.decode_single_token_bytes(t))), out.flush())
    on_evict = lambda before, cache: out.write(f"[evict {before}->{cache.length}]")
    log = view.TraceLog(pol) if html_path or plot_path or out.isatty() else None  # only for the pictures
    tokens, stats = generate(model, ids, pol, max_new_tokens, num_samples, temperature, top_k,
                             eot_id=None if ignore_eot else eos_id, vocab_limit=enc.n_vocab, generator=gen,
                             on_token=on_token, on_evict=on_evict, log=log, cuda_graphs=cuda_graphs)
    stats.update(budget=pol.budget, window=pol.window, ratio=pol.ratio, device=device, dtype=dtype)
    out.write("\n\n")
    if the_problem is not None:
        correct = [task.check_answer(the_problem, enc.decode(row)) for row in tokens.tolist()]
        stats.update(expected_answer=the_problem.answer, correct=sum(correct) / len(correct))
        out.write(f"expected answer: {the_problem.answer} | sample 0 is {'correct' if correct[0] else 'WRONG'}"
                  + (f" | {sum(correct)}/{len(correct)} samples correct" if len(correct) > 1 else "") + "\n")
    out.write(summary(stats) + "\n")
    rows = [row[:row.index(eos_id) + 1] if eos_id in row else row for row in tokens.tolist()]
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


def open_model(ckpt, init, preset, hf, predictor_path, device="cpu"):
    """(model, predictor, config, enc, meta): train.py's checkpoint `ckpt`, random weights of
    `preset` (built on `device`: an 8B model's random init takes minutes on a CPU), or the Hugging
    Face folder `hf`, whose weights are read later (model None), once every setting has been
    checked. meta: the task, the decoding defaults, and the ids of end-of-text (where a row stops)
    and `</think>` (where its thinking ends)."""
    if hf is not None:
        config, enc, meta = open_hf(hf)
        predictor, defaults = load_predictor(predictor_path, config) if predictor_path else (None, {})
        decoding = defaults.get("decoding", dict(budget=None, window=None, ratio=0.3))
        return None, predictor, config, enc, dict(meta, task=None, decoding=decoding)
    if init == "random":
        if preset not in PRESETS:
            raise UsageError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
        check_memory(f"--preset {preset} (built in float32)", weight_bytes(PRESETS[preset]), device)
        with torch.device(device):
            model, predictor = GPT(PRESETS[preset]), dynts.ImportancePredictor(PRESETS[preset].n_embd)
        meta = dict(encoding="bytes-think", task=None, decoding=dict(budget=256, window=64, ratio=0.3))
    else:
        model, predictor, meta = load_checkpoint(DEFAULT_CKPT if ckpt is None else ckpt)
    enc = get_encoding(meta["encoding"])
    return model, predictor, model.config, enc, dict(meta, eos_id=enc.eot_token,
                                                     end_think_id=enc.encode_single_token(END_THINK))


def check_hf_settings(hf, ckpt, init, prompt, policy, predictor_path, budget, window):
    """What --hf needs, checked before anything is read: no other model, a prompt (a real model
    has no built-in problem), a predictor for the policies that use one, and a budget and window
    where no predictor file gives them."""
    if ckpt is not None or init == "random":
        raise UsageError(f"--hf and {'--ckpt' if ckpt is not None else '--init random'}: give one model")
    if prompt is None:
        raise UsageError(f"--hf {hf} needs --prompt: a question (put in R1-Distill's chat format), or a whole "
                         "prompt that starts with the bos token")
    if policy in NEEDS_PREDICTOR and predictor_path is None:
        raise UsageError(f"--policy {policy} with --hf needs --predictor FILE: train one with "
                         f"`python -m lab.train --hf {hf} --problems FILE.jsonl`")
    if policy != "full" and predictor_path is None and (budget is None or window is None):
        raise UsageError(f"--policy {policy} with --hf needs --budget and --window (no --predictor file to "
                         "take them from)")


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
                   "default: a held-out problem of the checkpoint's task. With --hf: a question, put in "
                   "R1-Distill's chat format, or a whole prompt starting with the bos token")
    p.add_argument("--problem", type=int, help="which held-out problem to solve, 0-9999 (default: 0)")
    p.add_argument("--max-new-tokens", type=int, help="the most tokens to generate per sample "
                   "(default: up to the model's block_size)")
    p.add_argument("--num-samples", type=int, default=1, help="samples of the prompt, decoded as one batch")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 is greedy")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens only")
    p.add_argument("--seed", type=int, default=1337, help="random seed (model init and sampling)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when there is one)")
    p.add_argument("--cuda-graphs", action="store_true", help="replay each decode step as one CUDA graph "
                   "(fastpath.py; not for policies that score by attention weights)")
    p.add_argument("--ignore-eot", action="store_true", help="decode --max-new-tokens tokens even past the end of "
                   "text (for throughput runs: random weights write it at some step)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="weights and KV cache (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--ckpt", help="checkpoint from train.py (default: ckpt/tiny-reasoner.pt)")
    p.add_argument("--init", choices=["ckpt", "random"], default="ckpt",
                   help="load --ckpt, or random weights of --preset (mechanics only)")
    p.add_argument("--preset", default="tiny", help=f"model shape for --init random: {', '.join(PRESETS)}")
    p.add_argument("--hf", metavar="DIR", help="a Hugging Face checkpoint folder instead (Llama 3 / Qwen2: "
                   "R1-Distill); needs --prompt")
    p.add_argument("--predictor", dest="predictor_path", metavar="FILE", help="with --hf: the importance "
                   "predictor that `python -m lab.train --hf DIR` wrote (needed by dynts; gives the budget defaults)")
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
