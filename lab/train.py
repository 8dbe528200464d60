"""Train the tiny reasoner and its importance predictor: `python -m lab.train`.

The paper's pipeline in miniature (Guo et al., arXiv 2601.18383, Sec. 3):
1. the base model: a small GPT learns the synthetic reasoning task of task.py (next-token
   loss on the thinking and the answer; the prompt's random table is not predicted). Half of
   each batch attends through eviction holes drawn blind (`blind_eviction_mask`): nothing in
   them knows which tokens the task needs or which policy will decode, so every policy gets
   the same model;
2. importance labels: for correct traces, the attention that the answer pays to each thinking
   token, averaged over layers, heads and answer queries (dynts.importance_labels);
3. the ImportancePredictor: regression of those labels from each token's final hidden
   state, with the base model frozen.
4. (an ablation, off by default: `--finetune-steps N`) the base model fine-tuned on the caches
   that DynTS alone leaves (`dynts_eviction_mask`), then stage 3 again. It favours DynTS over
   every other policy; eval.py reports what it buys.

Everything lands in one checkpoint (a few MB, float16 weights) with its config, the
encoding's name, the task's settings and the decoding defaults; generate.py and eval.py
read it with torch.load(..., weights_only=True).
"""

import argparse
import json
import math
import os
import signal
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

import dynts
from lab import hf
from lab import task
from lab.cli import (UsageError, cache_bytes, check_output_path, check_positive, check_seed, exit_interrupted,
                     resolve_device, run_cli)
from dynts import LABEL_SCALE, importance_labels, predictor_loss
from generate import generate
from lab.checkpoint import DEFAULT_CKPT, load_checkpoint, load_hf_weights, open_hf
from model import END_THINK, GPT, GPTConfig, get_encoding

# The task: task.py's paper regime, a mixture of seven families, a short question (96 tokens) and
# a long trace (~6,300 tokens), each prompt naming its family ("mode 3"), so that the model
# writes the family's kind of trace, and the review's length, drawn around the recent window's.
TASK = dict(announce=True, paper_regime=True, n_filler=(76, 76), n_review=(10, 30))
# A curriculum: the first CURRICULUM fraction of the base model's steps use short traces (a few
# filler sentences, ~500 tokens), which teach the table look-ups at a fraction of the cost.
SHORT_TASK = dict(TASK, n_filler=(2, 8), n_review=(2, 6))
CURRICULUM = 0.4
# The base model: GPT-2's blocks (4.0M parameters, 1M of them learned positions), or (`--blocks
# llama`) the paper's model family in miniature, Llama's blocks of the same width and depth
# (RMSNorm, SwiGLU, RoPE, GQA; 3.0M: SwiGLU's 688 hidden units hold a GELU MLP's 1024 weights).
# Chosen on validation problems (docs/RESULTS.md, "How the design was chosen"): on the Llama blocks the answer's
# attention goes mostly to the last lines, the predictor ranks the thinking tokens poorly
# (Spearman 0.55 against 0.9) and DynTS falls far below the oracle.
CONFIGS = dict(
    llama=GPTConfig(block_size=7104, vocab_size=259, n_layer=4, n_head=8, n_kv_head=4, n_embd=256, mlp_hidden=688,
                    bias=False, norm="rmsnorm", mlp="swiglu", positions="rope"),
    gpt2=GPTConfig(block_size=7104, vocab_size=259, n_layer=4, n_head=8, n_kv_head=4, n_embd=256, mlp_hidden=1024,
                   bias=True),
)
# The decoding settings stored with the checkpoint: budgets at these fractions of Full's mean
# peak cache on validation problems (`budgets_on_validation`), with the paper's proportions
# (window 0.4 x budget, ratio 0.3). The second is the default budget.
BUDGET_FRACTIONS = (0.2, 0.3, 0.45, 0.6)
# Decoding samples at the training distribution's temperature: the checks of a trace are drawn at
# random, and a greedy decoder writes the likeliest check again and again, a trace unlike any it
# was trained on, until it loses its place (with a full cache: 40, 36 and 23 of 100 validation
# problems solved greedily, after 2,400 steps; docs/RESULTS.md). Stored with the checkpoint.
TEMPERATURE = 1.0
# The blind eviction masks draw, per row, one of these kinds with these weights (see
# blind_eviction_mask), and a simulated cache's setting from these ranges.
MASK_KINDS = dict(holes=0.4, replay=0.45, sinks=0.15)
# Budgets and windows are fractions of the row's length, so that short (curriculum) and long traces
# both meet the caches that the decoding budgets (20-60% of Full's peak) leave.
BLIND_SETTINGS = dict(budget=(0.14, 0.62), window=(0.2, 0.5), ratio=(0.2, 0.6), recent=(0.02, 0.18))
# Stage 4 (the ablation) draws each row's DynTS setting from these ranges.
FINETUNE_SETTINGS = dict(budget=(500, 1800), window=(100, 700), ratio=(0.3, 0.5))


# -----------------------------------------------------------------------------
# Data


def encode_batch(problems: list[task.Problem], enc, device):
    """Tokens (B, T) right-padded with end-of-text, and per row: prompt length, the index of
    `</think>`, and the length without padding."""
    rows = [enc.encode(p.text(), allowed_special="all") for p in problems]
    T = max(len(r) for r in rows)
    tokens = torch.full((len(rows), T), enc.eot_token, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = torch.tensor(r)
    end_think = enc.encode_single_token(task.END_THINK)
    prompt_len = torch.tensor([len(enc.encode(p.prompt, allowed_special="all")) for p in problems])
    think_end = torch.tensor([r.index(end_think) for r in rows])
    lengths = torch.tensor([len(r) for r in rows])
    return tokens.to(device), prompt_len.to(device), think_end.to(device), lengths.to(device)


def decisive_tokens(problem: task.Problem, enc) -> list[int]:
    """Token indices of the tokens that decide the answer (task.py's `decisive_spans`)."""
    text = problem.text()
    to_token = lambda c: len(enc.encode(text[:c], allowed_special="all"))  # character -> token index
    return [i for s, e in task.decisive_spans(problem) for i in range(to_token(s), to_token(e))]


class ScriptedScores(dynts.Policy):
    """A policy whose scores are given in advance, one per position (T,): replays a cache
    that some scoring rule would leave, under the same trigger and selection as every policy."""

    name = "scripted"

    def __init__(self, budget, window, ratio, table: torch.Tensor):
        super().__init__(budget, window, ratio)
        self.table = table

    def score(self, tokens, hidden, positions):
        return self.table[positions].expand(tokens.shape)


def blind_scores(tokens: torch.Tensor, generator) -> torch.Tensor:
    """Random scores (T,) for tokens (T,), of one of three shapes, none of which knows the task:
    independent per token, one value per token id (all the 'c's alike: the fragments a
    learned scorer keeps), or constant over random spans of 4-64 tokens (the neighbourhoods
    that pooling keeps)."""
    T = tokens.shape[0]
    kind = int(torch.randint(3, (), generator=generator))
    if kind == 0:
        return torch.rand(T, generator=generator)
    if kind == 1:
        return torch.rand(int(tokens.max()) + 1, generator=generator)[tokens.cpu()] + 0.01 * torch.rand(T, generator=generator)
    span = int(torch.randint(4, 65, (), generator=generator))
    return torch.rand(T // span + 1, generator=generator).repeat_interleave(span)[:T]


def blind_eviction_mask(problems, tokens, prompt_len, generator=None, device=None) -> torch.Tensor:
    """(B, T, T) bool for tokens (B, T): causal attention with the holes of a KV policy that
    knows nothing of the task. Per row, one of (MASK_KINDS):
    - holes:  a recent window of 2-18% of the row, and beyond it a random 2-100% (log-uniform) of
              the other tokens, the prompt among them or (p = 1/2) always kept;
    - replay: the cache of a budget / window / ratio setting (BLIND_SETTINGS) under the real
              trigger and selection, ranking by `blind_scores`, the prompt protected (+inf) with
              p = 1/2: which tokens each query saw, eviction by eviction;
    - sinks:  the first 1-8 tokens and a recent window of 2-18% of the row (StreamingLLM's cache).

    A deviation from the paper, which evicts from LLMs trained on full contexts: a tiny model
    trained only on full contexts breaks when anything is evicted. Trained on these too, it
    learns to answer from whatever a cache holds; which tokens a policy should keep is still
    for the policy to find, and no policy's own caches are used.

    The mask is built on `device` (default: tokens'); tokens and prompt_len on the CPU spare
    the CPU a wait for the GPU.
    """
    (B, T), device = tokens.shape, tokens.device if device is None else device
    names, weights = zip(*MASK_KINDS.items())
    kinds = torch.multinomial(torch.tensor(weights), B, replacement=True, generator=generator)
    uniform = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=generator))
    death = torch.full((B, T), T, dtype=torch.long)  # the first query that no longer sees each key
    for b in range(B):
        kind, P = names[kinds[b]], int(prompt_len[b])
        if kind == "replay":
            budget = int(T * uniform(*BLIND_SETTINGS["budget"]))
            window = int(budget * uniform(*BLIND_SETTINGS["window"]))
            ratio = round(uniform(*BLIND_SETTINGS["ratio"]), 3)
            scores = blind_scores(tokens[b], generator)
            if float(torch.rand((), generator=generator)) < 0.5:
                scores[:P] = dynts.INF
            death[b] = eviction_deaths(ScriptedScores(budget, window, ratio, scores), tokens[b].cpu(), None)
            continue
        window = int(T * uniform(*BLIND_SETTINGS["recent"]))
        if kind == "holes":
            keep = torch.rand(T, generator=generator) < 10 ** uniform(-1.7, 0)
            if float(torch.rand((), generator=generator)) < 0.5:
                keep[:P] = True
        else:  # sinks
            keep = torch.arange(T) < int(uniform(1, 9))
        # a key outside the window is seen by the queries up to `window` later, or by all if kept
        death[b] = torch.where(keep, T, torch.arange(T) + window)
    return visibility(death.to(device))


def visibility(death: torch.Tensor) -> torch.Tensor:
    """(B, T, T) bool from (B, T) death times: query i sees key j when j <= i < death[j]."""
    T = death.shape[-1]
    i = torch.arange(T, device=death.device)[:, None]  # queries
    j = torch.arange(T, device=death.device)[None, :]  # keys
    return (j <= i) & (i < death[:, None, :])


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class Progress:
    """Prints `stage step/steps | loss | steps/s | time left` every `every` steps."""

    def __init__(self, stage: str, steps: int, every: int, start: int = 0):
        self.stage, self.steps, self.every, self.start = stage, steps, every, start  # start: a resumed run's first step
        self.t0 = time.perf_counter()

    def __call__(self, step: int, loss: torch.Tensor):
        if (step + 1) % self.every and step + 1 != self.steps:
            return
        if not math.isfinite(loss.item()):  # diverged: stop before any checkpoint is written
            raise UsageError(f"{self.stage}: the loss became {loss.item()} by step {step + 1}; "
                             "no checkpoint written (try a lower learning rate)")
        rate = (step + 1 - self.start) / (time.perf_counter() - self.t0)
        print(f"{self.stage} {step + 1:5d}/{self.steps} | loss {loss.item():.4f} | {rate:5.2f} steps/s | "
              f"{(self.steps - step - 1) / rate / 60:4.1f} min left", flush=True)


# -----------------------------------------------------------------------------
# 1. The base model


STATE_KEYS = {"model", "opt", "generator", "step", "settings"}  # what an interrupted run's OUT.state holds


def train_model(model: GPT, steps: int, batch_size: int, lr: float, device, seed: int, log_every: int = 50,
                eviction_mask=None, curriculum: float = CURRICULUM, stage: str = "model",
                state_path: str | None = None, settings: dict | None = None, should_stop=None) -> bool:
    """Next-token training on the task. The even rows see full causal attention, the odd rows
    the holes of an eviction: `eviction_mask(problems, tokens, prompt_len, generator, device)` ->
    (b, T, T) bool on `device` for those rows (default: blind_eviction_mask). The first
    `curriculum` fraction of steps are short traces.

    Interruptible: when `should_stop(step)` says so, the state (weights, optimizer, the masks'
    generator, the step) goes to `state_path` and it returns False; called again with the same
    `settings`, it continues from there, as if never stopped (the problems are seeded by step).
    The state is also saved once the last step is done, so that what later stages spend their
    time on is kept until the checkpoint is written (main removes it then)."""
    enc = get_encoding()
    eviction_mask = eviction_mask or blind_eviction_mask
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    generator = torch.Generator().manual_seed(seed)
    start = 0
    if state_path is not None and os.path.exists(state_path):
        try:
            saved = torch.load(state_path, map_location=device, weights_only=True)
            missing = STATE_KEYS - set(saved) if isinstance(saved, dict) else STATE_KEYS
            if missing:  # loads, but is something else (a checkpoint, say)
                raise KeyError(", ".join(sorted(missing)))
        except Exception as e:  # a truncated or foreign file: say which, no traceback
            raise UsageError(f"{state_path}: not a state train.py can continue from ({type(e).__name__}); "
                             "delete it to start again") from None
        if saved["settings"] != settings:
            changed = sorted(k for k in settings if saved["settings"].get(k) != settings[k])
            raise UsageError(f"{state_path}: an interrupted run with other settings ({', '.join(changed)}); "
                             "delete it or use another --out")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        generator.set_state(saved["generator"].cpu())
        start = saved["step"]
        print(f"{stage}: resuming at step {start} of {steps} from {state_path}", flush=True)

    def save(step):  # whole or not at all: a Ctrl-C while writing leaves the last state
        torch.save(dict(model=model.state_dict(), opt=opt.state_dict(), generator=generator.get_state(), step=step,
                        settings=settings), state_path + ".tmp")
        os.replace(state_path + ".tmp", state_path)

    progress = Progress(stage, steps, log_every, start)
    model.train()
    for step in range(start, steps):
        if should_stop is not None and step > start and should_stop(step):
            save(step)
            model.eval()
            return False
        knobs = SHORT_TASK if step < curriculum * steps else TASK
        problems = task.problems("train", batch_size, seed=seed + step, **knobs)
        # On the CPU first: the masks' replay reads them there without waiting for the GPU.
        tokens, prompt_len, _, lengths = encode_batch(problems, enc, torch.device("cpu"))
        holes = eviction_mask(problems[1::2], tokens[1::2, :-1], prompt_len[1::2], generator, device=device) \
            if len(problems) > 1 else None  # (B // 2, T - 1, T - 1): the odd rows' attention
        order = torch.cat([torch.arange(0, len(problems), 2), torch.arange(1, len(problems), 2)])  # even rows first
        tokens, prompt_len, lengths = tokens[order].to(device), prompt_len[order].to(device), lengths[order].to(device)
        # Predict every token after the prompt: the thinking, the answer and the end of text.
        t = torch.arange(1, tokens.shape[1], device=device)
        mask = (t >= prompt_len[:, None]) & (t < lengths[:, None])  # (B, T - 1): which targets count
        with autocast:
            even = (len(problems) + 1) // 2  # full causal attention, in a fused kernel; then the holes
            hidden = model(tokens[:even, :-1])[1]
            if holes is not None:
                hidden = torch.cat([hidden, model(tokens[even:, :-1], mask=holes)[1]])
            logits = model.lm_head(hidden)  # (B, T - 1, vocab)
        # The mean over the targets that count, by weights rather than boolean indexing, which
        # would make the CPU wait for the forward before it builds the next batch's masks.
        losses = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
        loss = (losses.view(mask.shape) * mask).sum() / mask.sum()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup=min(200, steps // 10 + 1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        progress(step, loss)
    if state_path is not None and start < steps:
        save(steps)
    model.eval()
    return True


class StopRequest:
    """When the tiny reasoner's run stops early, keeping what it finished. `should_stop(step)` is
    train_model's question before each base-model step: true once --max-minutes have passed or
    Ctrl-C was pressed, so the step running ends and its state is kept. Entered (`with`), it takes
    SIGINT: during the base model's steps (`polled`) as that request; in any other stage, or a
    second time, at once. A Ctrl-C ends the run with one line on stderr saying what OUT.state
    keeps, and exit status 130, a shell's for SIGINT."""

    def __init__(self, state_path: str, max_minutes: float | None = None):
        self.state_path, self.requested, self.polled = state_path, False, False
        self.deadline = time.monotonic() + 60 * max_minutes if max_minutes is not None else None
        self.steps_kept = None  # the steps done that state_path holds, once this run has saved it

    def should_stop(self, step: int) -> bool:
        if self.requested or (self.deadline is not None and time.monotonic() > self.deadline):
            self.steps_kept = step  # train_model saves the state now
            return True
        return False

    def on_sigint(self, signum, frame):
        if not self.polled or self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        self.previous = signal.getsignal(signal.SIGINT)
        if self.previous is not signal.SIG_IGN:  # (ignored, as in a script's background job: it stays so)
            signal.signal(signal.SIGINT, self.on_sigint)
        return self

    def __exit__(self, kind, value, traceback):
        signal.signal(signal.SIGINT, self.previous)
        if kind is KeyboardInterrupt:
            self.interrupted()

    def interrupted(self):
        if not os.path.exists(self.state_path):
            exit_interrupted("python -m lab.train", "nothing was kept: the same command starts again")
        when = f"after step {self.steps_kept}" if self.steps_kept is not None else "as last saved"
        exit_interrupted("python -m lab.train", f"{self.state_path} keeps the base model's state {when}: "
                         "the same command continues from it")


# -----------------------------------------------------------------------------
# 3. The predictor


def thinking_features(model: GPT, problem: task.Problem, enc, device):
    """The thinking tokens of one correct trace (from `<think>`'s successor up to and including
    `</think>`): their final hidden states (N, C), their labels (N,), and the first one's index."""
    tokens, prompt_len, think_end, length = encode_batch([problem], enc, device)
    with torch.no_grad():
        labels, hidden = importance_labels(model, tokens[0], int(think_end[0]), int(length[0]))
    thinking = slice(int(prompt_len[0]), int(think_end[0]) + 1)
    return hidden[thinking].float(), labels[thinking], thinking.start


def train_predictor(model: GPT, predictor: dynts.ImportancePredictor, n_traces: int, steps: int, batch_tokens: int,
                    lr: float, device, seed: int, log_every: int = 100):
    """The predictor of the tiny reasoner: the labels of the thinking tokens of `n_traces`
    correct traces (the task's own, teacher-forced), then `fit_predictor`."""
    enc = get_encoding()
    hidden, targets = [], []
    for p in task.problems("train", n_traces, seed=seed, **TASK):  # one trace at a time: labels need their own cache
        h, labels, _ = thinking_features(model, p, enc, device)
        hidden.append(h)
        targets.append(labels)
    X, Y = torch.cat(hidden), torch.cat(targets)  # (N, C), (N,): every thinking token
    print(f"predictor data: {len(X)} thinking tokens of {n_traces} traces", flush=True)
    fit_predictor(predictor, X, Y, steps, batch_tokens, lr, device, seed, log_every)


def fit_predictor(predictor: dynts.ImportancePredictor, X: torch.Tensor, Y: torch.Tensor, steps: int,
                  batch_tokens: int, lr: float, device, seed: int, log_every: int = 100):
    """Regression of labels Y (N,) from hidden states X (N, C), the base model frozen, by
    dynts.predictor_loss. (Plain MSE on the scaled labels taught only that node letters matter:
    teacher-forced answers with the top-160 thinking tokens kept, 0/30 with MSE, 30/30 with it.)
    """
    X, Y = X.to(device, torch.float32), Y.to(device, torch.float32)
    gen = torch.Generator(device=device).manual_seed(seed)
    opt = torch.optim.AdamW(predictor.parameters(), lr=lr, weight_decay=0.0)
    progress = Progress("predictor", steps, log_every)
    predictor.train()
    for step in range(steps):
        idx = torch.randint(0, len(X), (batch_tokens,), device=device, generator=gen)
        loss = predictor_loss(predictor(X[idx]), Y[idx])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup=min(50, steps // 10 + 1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress(step, loss)
    predictor.eval()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (ties broken by order)."""
    ra = a.argsort().argsort().float()
    rb = b.argsort().argsort().float()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@torch.no_grad()
def ranking_quality(model, predictor, n: int, device, knobs: dict | None = None, seed: int = 0) -> dict:
    """On n validation traces: Spearman's rho between predicted scores and labels over the
    thinking tokens (mean over traces), and the recall of the decisive tokens (task.py's
    `decisive_spans`) among the predictor's top 10% of thinking tokens."""
    enc = get_encoding()
    rhos, recalls = [], []
    knobs = TASK if knobs is None else knobs  # the task's settings (an evaluated checkpoint's own)
    for p in task.problems("valid", n, seed=seed + 1, **knobs):  # not the budgets' problems (seed 0), not the test's
        hidden, labels, start = thinking_features(model, p, enc, device)
        pred = predictor(hidden)
        if not torch.isfinite(pred).all():  # never report a ranking for a predictor that outputs NaN
            raise ValueError("the predictor outputs non-finite scores; no checkpoint written")
        rhos.append(spearman(pred, labels))
        top = set((pred.topk(max(1, len(pred) // 10)).indices + start).tolist())  # as trace positions
        decisive = set(decisive_tokens(p, enc))
        recalls.append(len(decisive & top) / len(decisive))
    return dict(spearman=sum(rhos) / n, decisive_recall_top10=sum(recalls) / n, n_traces=n)


# -----------------------------------------------------------------------------
# 4. Fine-tuning on the caches DynTS leaves


@torch.no_grad()
def eviction_deaths(policy: dynts.Policy, tokens: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
    """(T,) long: for each token of a teacher-forced trace (T,), the first query that no
    longer sees it when `policy` decodes the trace (T if none): the prompt is prefilled, then
    one token per step, and query i sees the slots live right after token i is written
    (before any eviction it triggers). The policy's own observe and evict, replayed one segment
    between two evictions at a time; `hidden` (T, C) feeds its scores, if it needs them."""
    T, device = tokens.shape[0], tokens.device
    death = torch.full((T,), T, dtype=torch.long, device=device)
    policy.reset(1, policy.budget, device)
    live = LivePositions(device)
    start = 0
    while start < T:
        end = start + min(T - start, policy.budget - policy.length)  # until the cache is full or the trace ends
        new = torch.arange(start, end, device=device)
        policy.observe(tokens[None, start:end], None if hidden is None else hidden[None, start:end], new)
        live.pos = torch.cat([live.pos, new[None]], dim=1)
        if policy.should_evict(policy.length):
            before = live.pos[0]
            idx, _ = policy.evict(live)
            evicted = torch.ones(len(before), dtype=torch.bool, device=device)
            evicted[idx[0]] = False
            death[before[evicted]] = end  # token end - 1 triggered it: query end is the first blind one
        start = end
    return death


def values_kept_at_the_answer(policy: dynts.Policy, problem: task.Problem, enc) -> list[bool]:
    """For each asked result, whether the value of its first result statement ("kl, so A=kl.")
    is still cached when the answer starts, when `policy` decodes the problem's reference trace
    (eviction_deaths, without a model: for policies that score only the text)."""
    text = problem.text()
    at = lambda c: len(enc.encode(text[:c], allowed_special="all"))  # character -> token position
    death = eviction_deaths(policy, torch.tensor(enc.encode(text, allowed_special="all")), None)
    answer_start = at(text.index(END_THINK)) + 1
    kept = []
    for item in problem.answer.split():  # "A=kl" (or "A=kl>mn")
        statement = task.result_statement(item[0], item[2:4])
        end = text.index(statement) + len(statement)
        kept.append(bool(min(death[at(end - 3)], death[at(end - 2)]) > answer_start))  # the value: before the "."
    return kept


class LivePositions:
    """Stands in for the KV cache where only which positions are live matters: keep() follows
    an eviction as model.KVCache.keep does."""

    def __init__(self, device):
        self.pos = torch.empty(1, 0, dtype=torch.long, device=device)  # (1, L): the live slots' positions

    def keep(self, idx):
        self.pos = self.pos.gather(1, idx)


def dynts_eviction_mask(policy: dynts.Policy, tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """(T, T) bool: the keys each query sees when `policy` decodes this trace, teacher-forced."""
    return visibility(eviction_deaths(policy, tokens, hidden)[None])[0]


class DynTSMasks:
    """eviction_mask for train_model: for each row, a DynTS setting drawn from `settings`
    (FINETUNE_SETTINGS) and the mask of that policy with `predictor`, scored on the hidden
    states of a no-grad forward of the model being trained."""

    def __init__(self, model: GPT, predictor: dynts.ImportancePredictor, settings: dict):
        self.model, self.predictor, self.settings = model, predictor, settings

    @torch.no_grad()
    def __call__(self, problems, tokens, prompt_len, generator, device=None):
        tokens = tokens if device is None else tokens.to(device)
        (B, T), enc, device = tokens.shape, get_encoding(), tokens.device
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            _, hidden, _ = self.model(tokens)  # (B, T, C)
        (b0, b1), (w0, w1), (r0, r1) = (self.settings[k] for k in ("budget", "window", "ratio"))
        uniform = lambda lo, hi: lo + (hi - lo) * torch.rand((), generator=generator).item()
        end_think = enc.encode_single_token(task.END_THINK)
        masks = torch.zeros(B, T, T, dtype=torch.bool, device=device)
        for b in range(B):
            budget, window, ratio = int(uniform(b0, b1 + 1)), int(uniform(w0, w1 + 1)), round(uniform(r0, r1), 3)
            policy = dynts.DynTS(budget, window, ratio, int(prompt_len[b]), self.predictor, end_think, enc.eot_token)
            masks[b] = dynts_eviction_mask(policy, tokens[b], hidden[b].float())
        return masks


# -----------------------------------------------------------------------------
# 5. Decoding settings, chosen on validation problems


@torch.no_grad()
def budgets_on_validation(model: GPT, predictor: dynts.ImportancePredictor, n: int, device) -> dict:
    """The decoding defaults, chosen on n validation problems (never on evaluation ones): Full's
    mean peak cache there (prompt + the model's own trace, sampled at TEMPERATURE), budgets
    at BUDGET_FRACTIONS of it, and the paper's proportions: window 0.4 x budget, ratio 0.3.
    The default budget is the second fraction's (0.3: a third of Full's cache or less).
    Then DynTS decodes the same problems at the default budget: a seed that Full serves well
    but DynTS does not (one that reads a cut cache badly) shows here, before any test."""
    enc = get_encoding()
    problems = task.problems("valid", n, **TASK)
    prompts = [enc.encode(p.prompt, allowed_special="all") for p in problems]
    P = len(prompts[0])
    rows, new = decode_for_validation(model, prompts, dynts.Full(), device)
    peak = P + sum(new) / n - 1  # the cache after the last forward: the final token is never written
    budgets = [round(f * peak) for f in BUDGET_FRACTIONS]
    # Accuracy per family: a seed's health is judged on validation, never on the test problems.
    full_solved = solved_by_family(problems, rows, new, enc)
    budget, window = budgets[1], round(0.4 * budgets[1])
    print(f"validation: Full's mean peak cache {peak:.0f} tokens ({n} problems); budgets {budgets}; Full solves "
          + solved_line(full_solved), flush=True)
    dynts_solved = None
    if budget > P + window:  # (a model that stops early can leave too small a budget: nothing to check)
        policy = dynts.DynTS(budget, window, 0.3, P, predictor, enc.encode_single_token(END_THINK), enc.eot_token)
        dynts_solved = solved_by_family(problems, *decode_for_validation(model, prompts, policy, device), enc)
        print(f"validation: DynTS at {budget} tokens solves " + solved_line(dynts_solved), flush=True)
    fractions = lambda solved: {f: round(k / m, 4) for f, (k, m) in solved.items()}
    return dict(budget=budget, window=window, ratio=0.3, budgets=budgets, window_fraction=0.4, full_peak_valid=peak,
                n_valid=n, full_valid=fractions(full_solved), temperature=TEMPERATURE,
                dynts_valid=None if dynts_solved is None else fractions(dynts_solved))


def decode_for_validation(model: GPT, prompts: list[list[int]], policy: dynts.Policy, device):
    """Each prompt's trace, sampled at TEMPERATURE under `policy` (the same random draws for
    every policy): the rows of new tokens, and each row's length through its end-of-text."""
    enc = get_encoding()
    tokens, _ = generate(model, prompts, policy, model.config.block_size - len(prompts[0]), eot_id=enc.eot_token,
                         vocab_limit=enc.n_vocab, temperature=TEMPERATURE,
                         generator=torch.Generator(device=device).manual_seed(0))
    rows = tokens.tolist()
    return rows, [row.index(enc.eot_token) + 1 if enc.eot_token in row else len(row) for row in rows]


def solved_by_family(problems: list[task.Problem], rows, new, enc) -> dict:
    """{family: [problems whose trace ends in the right answer, problems]}, families that have some."""
    solved = {f: [0, 0] for f in task.families_of(TASK)}
    for p, row, k in zip(problems, rows, new):
        solved[p.family][0] += task.check_answer(p, enc.decode(row[:k]))
        solved[p.family][1] += 1
    return {f: km for f, km in solved.items() if km[1]}


def solved_line(solved: dict) -> str:
    """"84 of 100 (far 13/16, ...)": the problems solved in all, then per family."""
    total = [sum(km[i] for km in solved.values()) for i in (0, 1)]
    return f"{total[0]} of {total[1]} (" + ", ".join(f"{f} {k}/{m}" for f, (k, m) in solved.items()) + ")"


# -----------------------------------------------------------------------------
# 6. The predictor for a real model (--hf): the paper's pipeline, on your problems


def read_problems(path: str) -> list[dict]:
    """[{"question": str, "answer": str}, ...] from a .jsonl file, one problem a line."""
    if not os.path.isfile(path):
        raise UsageError(f"--problems {path}: no such file")
    problems = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                p = json.loads(line)
                problems.append(dict(question=str(p["question"]), answer=str(p["answer"])))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise UsageError(f"--problems {path}: line {n} is not a JSON object with question and answer "
                                 f"({type(e).__name__})") from None
    if not problems:
        raise UsageError(f"--problems {path}: no problems in it")
    return problems


def final_answer(text: str) -> str:
    """What a reasoning model answered: the last \\boxed{...} of the text after `</think>` (the
    convention of the paper's math benchmarks), else that whole text; spaces trimmed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return text.strip()
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return text[i:].strip()


def sample_trace(model: GPT, enc, meta: dict, question: str, max_new_tokens: int, temperature: float, generator):
    """(prompt + generated ids, the index of `</think>` or None): one sampled answer under Full."""
    prompt = hf.chat_prompt(question, enc, meta["bos"])
    new, _ = generate(model, [prompt], dynts.Full(), max_new_tokens, temperature=temperature,
                      eot_id=meta["eos_id"], vocab_limit=enc.n_vocab, generator=generator)
    ids = prompt + new[0].tolist()
    if meta["eos_id"] in ids[len(prompt):]:
        ids = ids[:ids.index(meta["eos_id"], len(prompt)) + 1]
    ends = [i for i in range(len(prompt), len(ids)) if ids[i] == meta["end_think_id"]]
    return ids, len(prompt), (ends[0] if ends else None)


def check_resume(work: str, settings: dict):
    """A folder of saved traces (train.py --hf) keeps the settings they were sampled with: a
    resumed run with other settings is refused, before the model is loaded."""
    os.makedirs(work, exist_ok=True)
    saved = os.path.join(work, "settings.json")
    if os.path.exists(saved):
        with open(saved, encoding="utf-8") as f:
            before = json.load(f)
        changed = [k for k in settings if before.get(k) != settings[k]]
        if changed:
            raise UsageError(f"{work}: its traces were sampled with other settings ({', '.join(changed)}); "
                             "delete it or use another --out")
    else:
        with open(saved, "w", encoding="utf-8") as f:
            json.dump(settings, f)


def hf_traces(model, enc, meta, problems, work: str, samples: int, max_new_tokens: int, temperature: float,
              device, seed: int):
    """Stage 1 and 2 of the paper on a real model: for each problem, `samples` sampled traces;
    the correct ones (final_answer == answer) get their labels (`importance_labels`) and their
    thinking tokens' hidden states, saved to WORK/<problem>-<sample>.pt. A trace already saved
    is skipped, so an interrupted run resumes where it stopped."""
    os.makedirs(work, exist_ok=True)
    jobs = [(i, k) for i in range(len(problems)) for k in range(samples)]
    t0, done_now = time.perf_counter(), 0
    for n, (i, k) in enumerate(jobs):
        path = os.path.join(work, f"{i}-{k}.pt")
        if os.path.exists(path):
            continue
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + i * 1000 + k)
        ids, P, think_end = sample_trace(model, enc, meta, problems[i]["question"], max_new_tokens, temperature, gen)
        answer = enc.decode(ids[think_end + 1:]).replace(meta["eos"], "") if think_end is not None else None
        record = dict(correct=answer is not None and final_answer(answer) == problems[i]["answer"].strip(),
                      length=len(ids), prompt_len=P)
        if record["correct"] and think_end + 1 < len(ids):
            tokens = torch.tensor(ids, device=device)
            with torch.no_grad():
                labels, hidden = importance_labels(model, tokens, think_end, len(ids))
            thinking = slice(P, think_end + 1)  # as the tiny reasoner's: up to and including </think>
            record.update(hidden=hidden[thinking].to("cpu", torch.float16), labels=labels[thinking].cpu())
        torch.save(record, path + ".tmp")
        os.replace(path + ".tmp", path)  # a trace is saved whole or not at all
        done_now += 1
        left = (time.perf_counter() - t0) / done_now * (len(jobs) - n - 1)
        print(f"traces {n + 1}/{len(jobs)} | problem {i} sample {k}: {'correct' if record['correct'] else 'wrong'}, "
              f"{len(ids) - P} tokens | {left / 60:.1f} min left", flush=True)
    records = [torch.load(os.path.join(work, f"{i}-{k}.pt"), weights_only=True) for i, k in jobs]
    return [r for r in records if "hidden" in r], len(records)


def train_hf(hf_dir, problems=None, out=None, force=False, device=None, dtype="auto", samples=1, max_new_tokens=8192,
             temperature=0.6, predictor_steps=1500, predictor_batch_tokens=4096, predictor_lr=1e-3, seed=0,
             budget=None, window=None, ratio=0.3):
    """`python -m lab.train --hf DIR --problems FILE.jsonl`: a predictor for a Hugging Face model.
    Writes a predictor-only checkpoint (generate.py --hf DIR --predictor OUT)."""
    if os.path.exists(out) and not force:
        raise UsageError(f"--out {out} exists: pass --force to overwrite it")
    check_output_path("--out", out)
    check_seed(seed)
    for flag, value in [("--samples", samples), ("--max-new-tokens", max_new_tokens),
                        ("--predictor-steps", predictor_steps), ("--predictor-batch-tokens", predictor_batch_tokens)]:
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if budget is None or window is None:
        raise UsageError("--hf needs --budget and --window: the decoding settings stored with the predictor "
                         "(the paper: 3000 / 1000 or 5000 / 2000, ratio 0.3)")
    if problems is None:
        raise UsageError("--hf needs --problems FILE.jsonl: one {\"question\": ..., \"answer\": ...} a line")
    problems = read_problems(problems)
    device = resolve_device(device)
    dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16}[dtype]
    check_resume(out + ".traces", dict(problems=problems, samples=samples, max_new_tokens=max_new_tokens,
                                       temperature=temperature, seed=seed))
    try:  # the small files first; the weights once they and the longest trace's KV cache fit
        config, enc, meta = open_hf(hf_dir)
        longest = max(len(hf.chat_prompt(p["question"], enc, meta["bos"])) for p in problems) + max_new_tokens
        model = load_hf_weights(hf_dir, config, device, dtype, also=cache_bytes(config, 1, longest, dtype.itemsize))
    except ValueError as e:
        raise UsageError(f"--hf {e}") from None
    print(f"{hf_dir}: {sum(p.numel() for p in model.parameters()):,} parameters, {len(problems)} problems, "
          f"{samples} samples each", flush=True)
    traces, n = hf_traces(model, enc, meta, problems, out + ".traces", samples, max_new_tokens, temperature,
                          device, seed)
    if not traces:
        raise UsageError(f"--problems: none of the {n} sampled traces was correct (and closed its thinking): "
                         "no labels to train on; more --samples or --max-new-tokens?")
    X = torch.cat([t["hidden"] for t in traces])
    Y = torch.cat([t["labels"] for t in traces])
    print(f"predictor data: {len(X)} thinking tokens of {len(traces)} correct traces (of {n})", flush=True)
    predictor = dynts.ImportancePredictor(model.config.n_embd).to(device)
    fit_predictor(predictor, X, Y, predictor_steps, predictor_batch_tokens, predictor_lr, device,
                  seed=seed * 1_000_003 + 10 ** 7)
    half = {k: v.detach().to("cpu", torch.float16) for k, v in predictor.state_dict().items()}
    torch.save(dict(kind="dynts-predictor", config=asdict(model.config), model_dir=os.path.abspath(hf_dir),
                    predictor=half, label_scale=LABEL_SCALE, decoding=dict(budget=budget, window=window, ratio=ratio),
                    metrics=dict(traces=n, correct=len(traces), tokens=len(X), predictor_steps=predictor_steps,
                                 seed=seed)), out)
    print(f"saved {out} ({os.path.getsize(out) / 2**20:.1f} MiB)")


# -----------------------------------------------------------------------------
# Command line


def save_checkpoint(path, model, predictor, metrics, decoding):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    half = lambda m: {k: v.detach().to("cpu", torch.float16) for k, v in m.state_dict().items()}
    torch.save(dict(config=asdict(model.config), encoding="bytes-think", task=TASK, decoding=decoding,
                    label_scale=LABEL_SCALE, model=half(model), predictor=half(predictor), metrics=metrics), path)


DEFAULT_HF_PREDICTOR = "dynts-predictor.pt"  # train.py --hf's --out, unless given
# Flags of one pipeline only: naming one in the other is an error, never silently ignored.
TINY_ONLY = dict(base="--base", max_minutes="--max-minutes", steps="--steps", batch_size="--batch-size", lr="--lr",
                 blocks="--blocks", predictor_traces="--predictor-traces", eval_traces="--eval-traces",
                 finetune_steps="--finetune-steps", finetune_lr="--finetune-lr", valid_problems="--valid-problems")
HF_ONLY = dict(problems="--problems", samples="--samples", max_new_tokens="--max-new-tokens",
               temperature="--temperature", budget="--budget", window="--window", ratio="--ratio", dtype="--dtype")


def main(out=DEFAULT_CKPT, force=False, base=None, device=None, steps=None, batch_size=None, lr=None,
         predictor_traces=None, predictor_steps=None, predictor_batch_tokens=4096, predictor_lr=1e-3, seed=0,
         eval_traces=None, finetune_steps=None, finetune_lr=None, valid_problems=None, blocks=None,
         max_minutes=None, hf_dir=None, **hf_flags):
    tiny = dict(base=base, max_minutes=max_minutes, steps=steps, batch_size=batch_size, lr=lr, blocks=blocks,
                predictor_traces=predictor_traces, eval_traces=eval_traces, finetune_steps=finetune_steps,
                finetune_lr=finetune_lr, valid_problems=valid_problems)
    given = lambda names: [flag for name, flag in names.items() if (hf_flags | tiny).get(name) is not None]
    if hf_dir is not None:
        if given(TINY_ONLY):
            raise UsageError(f"{given(TINY_ONLY)[0]} is for the tiny reasoner; with --hf it would be ignored")
        out = DEFAULT_HF_PREDICTOR if out == DEFAULT_CKPT else out
        return train_hf(hf_dir, out=out, force=force, device=device, predictor_steps=predictor_steps or 6000,
                        predictor_batch_tokens=predictor_batch_tokens, predictor_lr=predictor_lr, seed=seed,
                        **{k: v for k, v in hf_flags.items() if v is not None})
    if given(HF_ONLY):
        raise UsageError(f"{given(HF_ONLY)[0]} is for --hf DIR (a real model); the tiny reasoner does not use it")
    for flag, value in [("--steps", steps), ("--lr", lr)]:  # set, they would be silently dropped
        if base is not None and value is not None:
            raise UsageError(f"{flag} is the base model's training; with --base there is none "
                             "(--finetune-steps and --finetune-lr fine-tune it)")
    if finetune_lr is not None and not finetune_steps:
        raise UsageError("--finetune-lr is the fine-tuning's learning rate: it needs --finetune-steps")
    if base is not None and batch_size is not None and not finetune_steps:
        raise UsageError("--batch-size is per base-model step; with --base only --finetune-steps takes any")
    lr = 2e-3 if lr is None else lr
    finetune_lr = 3e-4 if finetune_lr is None else finetune_lr
    blocks = "gpt2" if blocks is None else blocks
    if os.path.exists(out) and not force:
        raise UsageError(f"--out {out} exists: pass --force to overwrite it")
    folder = os.path.dirname(os.path.abspath(out))
    try:  # now, not after training
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: its folder {folder} cannot be created ({e.strerror})") from None
    check_output_path("--out", out)
    check_seed(seed)
    for flag, value in [("--lr", lr), ("--predictor-lr", predictor_lr), ("--finetune-lr", finetune_lr)]:
        check_positive(flag, value)
    if max_minutes is not None:
        check_positive("--max-minutes", max_minutes)
        if base is not None:
            raise UsageError("--max-minutes bounds the base model's steps; with --base there are none")
    device = resolve_device(device)
    cuda = device.startswith("cuda")
    # The CPU setting is the same code with fewer, smaller steps. For the base model it shows
    # the pipeline, not the accuracy of the CUDA setting; the predictor trains fine on a CPU.
    steps = steps if steps is not None else (4500 if cuda else 60)
    batch_size = batch_size if batch_size is not None else (32 if cuda else 4)
    predictor_traces = predictor_traces if predictor_traces is not None else (500 if cuda else 60)
    # 6000: chosen on validation traces (seed 1, `docs/next/predictor-steps-valid-cpu.txt`): at 1500
    # the predictor was under-trained (Spearman 0.89, 46/60 traces keep all three answers at 30%;
    # 6000 steps: 0.93 and 50/60, the labels themselves 51/60; of 60 traces, within the intervals).
    predictor_steps = predictor_steps if predictor_steps is not None else (6000 if cuda else 1500)
    eval_traces = eval_traces if eval_traces is not None else (100 if cuda else 20)
    finetune_steps = finetune_steps if finetune_steps is not None else 0  # (the ablation: off)
    valid_problems = valid_problems if valid_problems is not None else (200 if cuda else 4)
    for name, value in [("--steps", steps), ("--batch-size", batch_size), ("--predictor-traces", predictor_traces),
                        ("--predictor-steps", predictor_steps), ("--predictor-batch-tokens", predictor_batch_tokens),
                        ("--eval-traces", eval_traces), ("--valid-problems", valid_problems)]:
        if value < 1:
            raise UsageError(f"{name} must be >= 1, got {value}")
    if finetune_steps < 0:
        raise UsageError(f"--finetune-steps must be >= 0, got {finetune_steps}")
    if blocks not in CONFIGS:
        raise UsageError(f"--blocks {blocks!r}: choose one of {', '.join(CONFIGS)}")
    config = CONFIGS[blocks]
    device = torch.device(device)
    torch.manual_seed(seed)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.perf_counter()
    with StopRequest(out + ".state", max_minutes) as stop:  # Ctrl-C: one line, and what it kept
        if base is None:
            model = GPT(config).to(device)
            n_params = sum(p.numel() for p in model.parameters())
            # An interrupted run (--max-minutes, Ctrl-C) keeps its state beside --out; the same command continues it.
            stop.polled = True  # (before the line below: a Ctrl-C that follows it must find the state kept)
            print(f"base model: {n_params / 1e6:.2f}M parameters, {config}", flush=True)
            finished = train_model(model, steps, batch_size, lr, device, seed=seed * 1_000_003, state_path=out + ".state",
                                   settings=dict(seed=seed, steps=steps, batch_size=batch_size, lr=lr, blocks=blocks,
                                                 task=TASK, curriculum=CURRICULUM), should_stop=stop.should_stop)
            stop.polled = False
            if finished:  # train_model kept them too, until the checkpoint is written
                stop.steps_kept = steps
            if stop.requested:  # (pressed during the last step, it stops here)
                stop.interrupted()
            if not finished:
                print(f"stopped at the --max-minutes limit; the base model's state is in {out}.state: "
                      "the same command continues it")
                return None
            metrics = dict(steps=steps, batch_size=batch_size, base_device=str(device), seed=seed)
        else:  # keep a trained base model, train only the predictor
            model, _, meta = load_checkpoint(base, flag="--base")
            if asdict(model.config) != asdict(config) or meta["task"] != TASK:
                raise UsageError(f"--base {base}: its config or task differs from train.py's")
            model.to(device).eval()
            metrics = {k: v for k, v in meta["metrics"].items() if k in ("steps", "batch_size", "base_device",
                                                                         "finetune_steps", "seed")}
            print(f"base model from {base}")
        predictor = dynts.ImportancePredictor(config.n_embd).to(device)
        train_predictor(model, predictor, predictor_traces, predictor_steps, predictor_batch_tokens, predictor_lr,
                        device, seed=seed * 1_000_003 + 10 ** 7)
        if finetune_steps:  # stage 4: the caches this predictor leaves, then a predictor for the fine-tuned model
            train_model(model, finetune_steps, batch_size, finetune_lr, device, seed=seed * 1_000_003 + 2 * 10 ** 7,
                        eviction_mask=DynTSMasks(model, predictor, FINETUNE_SETTINGS), curriculum=0, stage="fine-tune")
            predictor = dynts.ImportancePredictor(config.n_embd).to(device)
            train_predictor(model, predictor, predictor_traces, predictor_steps, predictor_batch_tokens, predictor_lr,
                            device, seed=seed * 1_000_003 + 3 * 10 ** 7)
            metrics.update(finetune_steps=finetune_steps + metrics.get("finetune_steps", 0))
        metrics.update(ranking_quality(model, predictor, eval_traces, device))
        metrics.update(seconds=time.perf_counter() - t0, predictor_traces=predictor_traces,
                       predictor_steps=predictor_steps, predictor_device=str(device))
        print(f"ranking quality on validation traces: Spearman {metrics['spearman']:.3f}, decisive tokens in the top 10%: "
              f"{metrics['decisive_recall_top10']:.1%} ({eval_traces} traces)")
        model.eval()
        decoding = budgets_on_validation(model, predictor, valid_problems, device)
        save_checkpoint(out, model, predictor, metrics, decoding)
        if os.path.exists(out + ".state"):
            os.remove(out + ".state")
        print(f"saved {out} ({os.path.getsize(out) / 2**20:.1f} MiB)")
        return metrics


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m lab.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_CKPT, help="where to write the checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--base", help="take the base model from this checkpoint: train the predictor (and fine-tune, "
                   "with --finetune-steps)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when there is one)")
    p.add_argument("--steps", type=int, help="base-model steps (default: 4500 on cuda, 60 on cpu)")
    p.add_argument("--max-minutes", type=float, help="stop the base-model steps after this many minutes, their "
                   "state kept in OUT.state (as on Ctrl-C); the same command again continues from it")
    p.add_argument("--batch-size", type=int, help="problems per base-model step (default: 32 on cuda, 4 on cpu)")
    p.add_argument("--lr", type=float, help="base-model peak learning rate (default: 2e-3)")
    p.add_argument("--predictor-traces", type=int, help="correct traces labelled for the predictor (default: 500 / 60)")
    p.add_argument("--predictor-steps", type=int, help="predictor steps (default: 6000 on cuda, 1500 on cpu)")
    p.add_argument("--predictor-batch-tokens", type=int, default=4096, help="thinking tokens per predictor step")
    p.add_argument("--predictor-lr", type=float, default=1e-3, help="predictor peak learning rate")
    p.add_argument("--blocks", help="the base model's blocks: gpt2 (LayerNorm, GELU, learned "
                   "positions) or llama (RMSNorm, SwiGLU, RoPE: its predictor ranks poorly, see docs/RESULTS.md)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and of the training problems")
    p.add_argument("--finetune-steps", type=int, help="the ablation: base-model steps on the caches "
                   "DynTS alone leaves, then the predictor again (default: 0, off)")
    p.add_argument("--finetune-lr", type=float, help="stage 4 peak learning rate (default: 3e-4)")
    p.add_argument("--eval-traces", type=int, help="held-out traces for the ranking quality (default: 100 / 20)")
    p.add_argument("--valid-problems", type=int, help="validation problems on which the budgets are chosen "
                   "(default: 200 / 4)")
    g = p.add_argument_group("a real model: the predictor for a local Hugging Face checkpoint (Llama 3, Qwen2)")
    g.add_argument("--hf", dest="hf_dir", metavar="DIR", help="the checkpoint folder (config.json, *.safetensors, "
                   "tokenizer.json); needs `pip install safetensors`; nothing is downloaded")
    g.add_argument("--problems", help="a .jsonl file, one {\"question\": ..., \"answer\": ...} a line; a trace is "
                   "correct when the last \\boxed{} after </think> (or all of it) equals the answer")
    g.add_argument("--samples", type=int, help="sampled traces per problem (default: 1)")
    g.add_argument("--max-new-tokens", type=int, help="the longest trace (default: 8192)")
    g.add_argument("--temperature", type=float, help="sampling temperature (default: 0.6, R1's)")
    g.add_argument("--budget", type=int, help="the KV budget stored with the predictor (required with --hf)")
    g.add_argument("--window", type=int, help="the recent window stored with the predictor (required with --hf)")
    g.add_argument("--ratio", type=float, help="the fraction of older tokens kept (default: 0.3)")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], help="weights (default: bfloat16 on cuda)")
    return p.parse_args(argv)


def cli(argv=None):
    run_cli("python -m lab.train", main, parse_args, argv)


if __name__ == "__main__":
    cli()
