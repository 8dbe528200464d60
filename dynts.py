"""DynTS: Dynamic Thinking-Token Selection (Guo et al., arXiv 2601.18383, ICML 2026).

A reasoning model's final answer attends to only a few "decision-critical" tokens of its
`<think> ... </think>` trace. DynTS predicts, from each token's final hidden state, how much the
answer will attend to it (`ImportancePredictor`, trained on `importance_labels`), and when the
KV cache reaches its budget it keeps the recent window plus the highest-scoring older tokens.

Read it top to bottom: the predictor and its training label (the paper's Sec. 3), the one pure
function that chooses what to keep (`select_keep`), then the policies. A policy says how each
cache slot is scored; `Policy.evict` carries out an eviction: select, compact the cache
(`model.KVCache.keep`), move the scores along. `policy.scores[b, s]` belongs to the token in
slot s of row b and moves with it.

To add a policy: subclass `Policy` and override what you change (its docstring lists the
methods). From Python, hand an instance to `generate.generate`; to run it by name from the
command line, add the class to `YOURS` in lab/policies.py (its name + "+p" then protects the
prompt too). The baselines there (Window, StreamingLLM, H2O, SnapKV, R-KV, SepLLM) are examples.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import GPT, KVCache

INF = float("inf")  # a protected slot: the prompt (and a baseline's sinks), at the same slots in every row
ANSWER = torch.finfo(torch.float32).max  # the answer: above every thinking token, below the prompt


# -----------------------------------------------------------------------------
# The importance predictor and its label


class ImportancePredictor(nn.Module):
    """The paper's MLP on the final hidden state: Linear(C, 2C) - Softplus - Linear(2C, C/2) -
    Softplus - Linear(C/2, 1) - Softplus (4096 -> 8192 -> 2048 -> 1 in the paper). Softplus at
    the end keeps the predicted importance non-negative, like the attention labels."""

    def __init__(self, n_embd: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_embd, 2 * n_embd), nn.Softplus(),
            nn.Linear(2 * n_embd, n_embd // 2), nn.Softplus(),
            nn.Linear(n_embd // 2, 1), nn.Softplus(),
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden).squeeze(-1)  # (B, T, C) -> (B, T)


@torch.no_grad()
def importance_labels(model: GPT, tokens: torch.Tensor, think_end: int, length: int):
    """The label of every token of one trace (T,): the attention it receives from the answer;
    and, as they come for free, the trace's final hidden states (T, C), the predictor's input.

    The paper's definition: the mean of A[l, h, i, j] over layers l, heads h and answer queries
    i (the tokens after `</think>`, at index think_end). Prefill up to `</think>` into a cache,
    then run the answer as one chunk that asks for the attention each slot received (summed
    over the chunk's queries, averaged over layers and heads); dividing by the number of
    queries gives the mean. The answer's own slots are not thinking tokens: label 0.
    """
    cache = KVCache(model.config, 1, capacity=length, device=tokens.device, dtype=model.wte.weight.dtype)
    _, thinking, _ = model(tokens[None, :think_end + 1], cache)  # the prompt, the thinking and </think>
    _, answer, attention = model(tokens[None, think_end + 1:length], cache, need_attention=True)
    labels = attention.mean(dim=(0, 2))[0] / (length - think_end - 1)  # (length,): over layers and heads
    labels[think_end + 1:] = 0.0
    return labels, torch.cat([thinking, answer], dim=1)[0]


LABEL_SCALE = 1e4  # labels are attention probabilities (~1e-4): rescaled for the regression


def predictor_loss(predicted: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The paper regresses LABEL_SCALE * label by MSE. Our labels are heavy-tailed (a few
    tokens get 100x the mean) and plain MSE taught only that node letters matter, so the error
    is taken between log(1 + prediction) and log(1 + scaled label): errors in ratios."""
    return F.mse_loss(torch.log1p(predicted), torch.log1p(LABEL_SCALE * labels))


# -----------------------------------------------------------------------------
# Selection: one pure function


def select_keep(scores: torch.Tensor, n_keep: int, window: int) -> torch.Tensor:
    """The slots to keep, (B, n_keep) long, each row sorted ascending.

    Each row keeps its last `window` slots, and of the slots before them the
    `n_keep - window` highest-scoring ones. +inf always wins, NaN counts as -inf, and among
    equal scores the later slot wins. Pure and deterministic, on CPU and GPU alike.
    """
    if scores.dim() != 2 or not scores.is_floating_point():
        raise ValueError(f"scores must be a float tensor (B, T), got {tuple(scores.shape)} {scores.dtype}")
    B, T = scores.shape
    if not 0 <= window <= n_keep <= T:
        raise ValueError(f"need 0 <= window <= n_keep <= T, got window={window}, n_keep={n_keep}, T={T}")
    older = scores[:, :T - window]
    older = older.masked_fill(older.isnan(), -INF)  # (B, T - window)
    # A stable ascending sort puts equal scores in slot order, so the last k entries are the
    # k highest, and among equal scores the later slots.
    order = older.sort(dim=1, stable=True).indices  # (B, T - window)
    chosen = order[:, order.shape[1] - (n_keep - window):]  # (B, n_keep - window)
    recent = torch.arange(T - window, T, device=scores.device).expand(B, window)  # (B, window)
    return torch.cat([chosen.sort(dim=1).values, recent], dim=1)  # (B, n_keep)


# -----------------------------------------------------------------------------
# Policies: each one only says how a slot is scored


class Policy:
    """Evicts when the cache holds `budget` slots: keeps the last `window`, and of the older
    ones the top `max(protected, floor(ratio * (L - window)))` by score, where `protected`
    counts the +inf (never evicted) older slots. +inf goes by position (the prompt, a baseline's
    sinks), never by a token's content, so every row keeps the same number of slots, and no
    row's tokens change what another row keeps. With `protect_prompt`, the prompt's
    `prompt_len` tokens rank +inf, whatever their scores.

    A subclass overrides what it changes:
    - `score`: each new token's score, recorded once (DynTS: the predictor's);
    - `add_attention`, with `needs_attention = True`: fold the attention each live slot received
      at this step into its score (H2O, SnapKV);
    - `eviction_scores`: rank by something read at the eviction (SnapKV pools, R-KV reads keys);
    - `n_keep`: how many slots an eviction keeps (`reads_ratio = False` where `ratio` plays no part);
    - `should_evict`: when to evict. The cache holds `budget` slots at most, so by then.
    A plain Policy ranks the answer (after `</think>`) like any thinking token; to keep DynTS's
    rule for it, subclass `DynTS` and override `predict`.
    """

    name = "?"
    needs_attention = False  # the model must return the attention each slot received (the slow path)
    needs_predictor = False  # scores come from an ImportancePredictor
    reads_ratio = True  # `ratio` sets how many older slots an eviction keeps (n_keep)
    graph_safe = True  # `score` may be replayed as a CUDA graph (lab/fastpath.py): no generator of its own

    def __init__(self, budget: int, window: int, ratio: float = 0.3, prompt_len: int = 0,
                 protect_prompt: bool = False):
        if not 0 < ratio <= 1:
            raise ValueError(f"--ratio must be in (0, 1], got {ratio}")
        if not 0 <= window < budget:
            raise ValueError(f"--window must be >= 0 and below --budget, got window={window}, budget={budget}")
        if window + math.floor(ratio * (budget - window)) >= budget:
            raise ValueError(f"--ratio {ratio} keeps all {budget - window} older tokens of a full cache: "
                             "nothing would be evicted (lower --ratio)")
        if protect_prompt and prompt_len + window >= budget:
            raise ValueError(f"--budget {budget} must exceed the protected prompt ({prompt_len} tokens) "
                             f"plus --window {window}")
        self.budget, self.window, self.ratio = budget, window, ratio
        self.prompt_len = prompt_len  # the prompt's tokens: generation starts at this position
        self.protect_prompt = protect_prompt

    def reset(self, batch_size: int, capacity: int, device=None):
        """Start a generation: one score per cache slot, preallocated like the cache."""
        # `positions` and `length` mirror the cache's `pos` and `length` (keep_scores follows each
        # compaction), so that a ranking needs only the policy, and the native baselines' per-head
        # sets, which the cache's one `pos` row cannot hold, have their own.
        self.scores = torch.zeros(batch_size, capacity, device=device)  # (B, capacity)
        self.positions = torch.zeros(batch_size, capacity, dtype=torch.long, device=device)  # each slot's token
        self.length = 0  # live slots, as in the cache

    def score(self, tokens, hidden, positions) -> torch.Tensor:
        """Scores (B, T) of T new tokens (B, T), from their final hidden states (B, T, C). Every
        row writes its new tokens at the same positions, so `positions` may come as (B, T), (1, T)
        or (T,): expand a result computed from it alone to `tokens.shape`. It may be a view of the
        cache's positions: clone it to keep it. The default, 0, suits policies that score by
        attention later."""
        return torch.zeros(tokens.shape, device=tokens.device)

    def observe(self, tokens, hidden, positions, attention=None):
        """Record the scores of the T tokens the model just wrote into the cache. `attention`
        (n_layer, B, Hkv, S), the attention each live slot received, comes only when
        needs_attention; a shared ranking takes its mean over layers and heads (B, S)."""
        T = tokens.shape[1]
        self.scores[:, self.length:self.length + T] = self.score(tokens, hidden, positions)
        self.positions[:, self.length:self.length + T] = positions
        self.length += T
        if attention is not None:  # (n_layer, B, Hkv, S): one ranking for every layer and head
            self.add_attention(attention.mean(dim=(0, 2)))

    def add_attention(self, attention: torch.Tensor):
        """Attention-based policies fold this step's attention (B, S) into the live scores."""

    def should_evict(self, cache_length: int) -> bool:
        return cache_length >= self.budget  # the cache's capacity: one more token would not fit

    def eviction_scores(self, cache: KVCache) -> torch.Tensor:
        """What an eviction ranks the live slots by (B, L): the recorded scores. SnapKV pools
        them; R-KV subtracts the keys' redundancy, read from the cache."""
        return self.scores[..., :self.length]

    def ranking(self, cache: KVCache) -> torch.Tensor:
        """The eviction scores, with the protected prompt at +inf (B, L)."""
        ranking = self.eviction_scores(cache)
        if self.protect_prompt:
            ranking = ranking.masked_fill(self.positions[..., :self.length] < self.prompt_len, INF)
        return ranking

    def n_keep(self, L: int, protected: int) -> int:
        """How many of L slots an eviction keeps: the window and max(protected, floor(ratio * older))."""
        return self.window + max(protected, math.floor(self.ratio * (L - self.window)))

    def select(self, ranking: torch.Tensor) -> torch.Tensor:
        """The slots to keep (B, n_keep) of a ranking (B, L). (The native baselines rank each
        layer and kv head apart: (n_layer, B, Hkv, L) in, (n_layer, B, Hkv, n_keep) out, the
        same rule on every row of heads.)"""
        L = ranking.shape[-1]
        rows = ranking.reshape(-1, L)  # (B, L), or one row per (layer, row, kv head)
        protected = int((rows[:, :L - self.window] == INF).sum(dim=1).max())  # +inf by position: alike in every row
        # A full cache frees at least one slot, even where sinks and window fill it.
        keep = select_keep(rows, min(self.n_keep(L, protected), L - 1), self.window)
        return keep.view(*ranking.shape[:-1], -1)

    def evict(self, cache: KVCache):
        """One eviction: choose the slots to keep, compact the cache to them, move their scores
        along. Returns the kept slots (B, n_keep) and the ranking they won by (B, L)."""
        ranking = self.ranking(cache)
        idx = self.select(ranking)
        cache.keep(idx)
        self.keep_scores(idx)
        return idx, ranking

    def keep_scores(self, idx: torch.Tensor):
        """Follow the cache's compaction: the kept slots' scores and positions move with them."""
        n = idx.shape[-1]
        self.scores[..., :n] = self.scores[..., :self.length].gather(-1, idx)
        self.positions[..., :n] = self.positions[..., :self.length].gather(-1, idx)
        self.length = n


class Full(Policy):
    """The full cache: never evicts (the paper's "Transformers" baseline)."""

    name = "full"
    reads_ratio = False

    def __init__(self):
        self.budget, self.window, self.ratio, self.prompt_len, self.protect_prompt = None, 0, 1.0, 0, False

    def should_evict(self, cache_length):
        return False


class DynTS(Policy):
    """The predicted importance of each token, computed once, when the token is the model's
    input. The prompt is protected (+inf). The answer (after `</think>`) ranks ANSWER, above
    every thinking token: an answer longer than the row's older share loses its oldest tokens
    rather than growing the share, which would grow every row of the batch. Tokens after a
    row's end-of-text are padding: -inf. Only what the model generated after the prompt decides
    what is answer or padding: special tokens inside the prompt do not."""

    name = "dynts"
    needs_predictor = True

    def __init__(self, budget, window, ratio, prompt_len: int, predictor: ImportancePredictor, end_think_id: int,
                 eot_id: int, protect_prompt: bool = True):
        super().__init__(budget, window, ratio, prompt_len, protect_prompt)
        self.predictor, self.end_think_id, self.eot_id = predictor, end_think_id, eot_id

    def reset(self, batch_size, capacity, device=None):
        super().reset(batch_size, capacity, device)
        self.answering = torch.zeros(batch_size, dtype=torch.bool, device=device)  # wrote </think>
        self.done = torch.zeros(batch_size, dtype=torch.bool, device=device)  # wrote end-of-text

    def predict(self, hidden) -> torch.Tensor:
        """The predicted importance (B, T) of tokens from their hidden states (B, T, C)."""
        return self.predictor(hidden).float()

    def score(self, tokens, hidden, positions):
        return self.mark_answer(self.predict(hidden), tokens, positions)

    def mark_answer(self, s, tokens, positions):
        """Scores s (B, T) with the answer's tokens at ANSWER and the padding after end-of-text at -inf."""
        generated = tokens.masked_fill((positions < self.prompt_len).expand(tokens.shape), -1)  # the prompt: no token
        answering = self.answering[:, None] | strictly_after(generated, self.end_think_id)  # (B, T)
        done = self.done[:, None] | strictly_after(generated, self.eot_id)  # (B, T)
        s = s.float().masked_fill(answering, ANSWER).masked_fill(done, -INF)  # ANSWER overflows bf16
        self.answering |= (generated == self.end_think_id).any(dim=1)
        self.done |= (generated == self.eot_id).any(dim=1)
        return s


def strictly_after(tokens: torch.Tensor, token_id: int) -> torch.Tensor:
    """(B, T) bool: the positions after the first `token_id` of each row of tokens (B, T)."""
    hit = (tokens == token_id).long()
    return (hit.cumsum(dim=1) - hit) > 0
