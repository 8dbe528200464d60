"""DynTS: Dynamic Thinking-Token Selection (Guo et al., arXiv 2601.18383, ICML 2026).

A reasoning model's final answer attends to only a few "decision-critical" tokens of its
`<think> ... </think>` trace. DynTS predicts, from each token's final hidden state, how much
the answer will need it (`ImportancePredictor`), and when the KV cache reaches its budget it
keeps the recent window plus the highest-scoring older tokens and evicts the rest.

The file has the shape of a scorer:
- a policy only says how each cache slot is scored (`Policy.score`);
- one pure function chooses what to keep (`select_keep`);
- the cache compacts itself in place, every layer by one index (`model.KVCache.keep`),
  called by generate.py.

Scores are aligned with the cache slots: `policy.scores[b, s]` belongs to the token in slot s
of row b, and moves with it when the cache is compacted.

A batch of prompts of different lengths is left-padded (model.KVCache): each row's positions
start at 0 at its first real token, and a slot with a negative position is empty. The budget
counts each row's real tokens: a row evicts when it holds `budget` of them, keeps what it
would keep alone, and never keeps an empty slot over a real token (`Policy.select`).

The policies: Full (never evicts), Window, StreamingLLM, DynTS; the paper's other baselines
H2O (accumulated, or the last step's attention as the official DynTS code ran it), SnapKV,
R-KV (attention-based: only they make the model return attention) and SepLLM; and DynTS's
ablations: random or bottom-k thinking tokens, no protected prompt, each both as this project
runs them (the prompt protected) and as the official code did. Every policy can protect the
prompt as DynTS does (`prompt_len`: those positions score +inf at every eviction).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

INF = float("inf")


# -----------------------------------------------------------------------------
# The importance predictor


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


def with_empty_slots(idx: torch.Tensor, due: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The slots to keep (B, n) when only some rows are due: a due row keeps its row of idx
    (B, n_keep), any other row all its real slots, `real` (B, L) bool. The cache keeps one length
    for all rows, n, the most any row keeps: a row that keeps fewer carries that many more of
    its slots along, the latest others (older than its window), as empty slots: -1."""
    keeps = torch.where(due[:, None], torch.zeros_like(real).scatter(1, idx, True), real)  # (B, L)
    n = int(keeps.sum(dim=1).max())
    carried = select_keep(keeps.float(), n, 0)  # (B, n): every kept slot, then the latest others
    return carried.masked_fill(~keeps.gather(1, carried), -1)


def row_ends(lengths):
    """Prompt lengths as something positions compare with: an int (one length), or a (B, 1)
    tensor (one per row) against positions (B, T)."""
    return lengths if isinstance(lengths, int) else torch.tensor(lengths, dtype=torch.long).view(-1, 1)


# -----------------------------------------------------------------------------
# Policies: each one only says how a slot is scored


class Policy:
    """Evicts when the cache holds `budget` slots: keeps the last `window`, and of the older
    ones the top `max(protected, floor(ratio * (L - window)))` by score, where `protected`
    is the number of +inf (never evicted) older slots, the most of any row. All rows keep the
    same count; each row keeps its own slots. (In a ragged batch, only the rows that hold
    `budget` real tokens evict: see `select`.)

    Subclasses implement `score`; attention-based ones also `add_attention`, to rescore old slots.
    """

    name = "?"
    needs_attention = False  # ask the model for the attention each slot receives (slow path)
    graph_safe = True  # may `score` be replayed as a CUDA graph (fastpath.GraphedObserve): no generator of its own

    def __init__(self, budget: int, window: int, ratio: float = 0.3, prompt_len: int | list[int] = 0):
        longest = prompt_len if isinstance(prompt_len, int) else max(prompt_len)  # a list: one per row
        if not 0 < ratio <= 1:
            raise ValueError(f"--ratio must be in (0, 1], got {ratio}")
        if not 0 <= window < budget:
            raise ValueError(f"--window must be >= 0 and below --budget, got window={window}, budget={budget}")
        if window + math.floor(ratio * (budget - window)) >= budget:
            raise ValueError(f"--ratio {ratio} keeps all {budget - window} older tokens of a full cache: "
                             "nothing would be evicted (lower --ratio)")
        if longest and longest + window >= budget:
            raise ValueError(f"--budget {budget} must exceed the protected prompt ({longest} tokens) "
                             f"plus --window {window}")
        self.budget, self.window, self.ratio = budget, window, ratio
        self.prompt_len = prompt_len  # positions below it are never evicted (0: nothing protected)
        self.prompt_end = row_ends(prompt_len)  # the same, to compare with positions (B, T)

    def reset(self, batch_size: int, capacity: int, device=None):
        """Start a generation: one score per cache slot, preallocated like the cache."""
        self.scores = torch.zeros(batch_size, capacity, device=device)  # (B, capacity)
        self.positions = torch.zeros(batch_size, capacity, dtype=torch.long, device=device)  # each slot's token
        self.length = 0  # live slots, as in the cache
        if torch.is_tensor(self.prompt_end):
            self.prompt_end = self.prompt_end.to(device)

    def score(self, tokens, hidden, positions) -> torch.Tensor:
        """Scores (B, T) of T new tokens (B, T) at positions (B, T) (each row's own: negative for
        left padding) or (T,) (the same in every row), from their final hidden states (B, T, C).
        The default, 0, suits policies that score by attention later."""
        return torch.zeros(tokens.shape, device=tokens.device)

    def observe(self, tokens, hidden, positions, attn=None):
        """Record the scores of the T tokens the model just wrote into the cache. `attn` (B, S),
        the attention each live slot received, comes only for policies with needs_attention."""
        T = tokens.shape[1]
        self.scores[:, self.length:self.length + T] = self.score(tokens, hidden, positions)
        self.positions[:, self.length:self.length + T] = positions
        self.length += T
        if attn is not None:
            self.add_attention(attn)

    def add_attention(self, attn: torch.Tensor):
        """Attention-based policies fold this step's attention (B, S) into the live scores."""

    def should_evict(self, cache_length: int) -> bool:
        return cache_length >= self.budget

    def select(self, cache=None) -> torch.Tensor:
        """The slots to keep (B, n): window + max(protected, floor(ratio * (L - window))).

        A row is due when none of its L slots is empty: it holds `budget` real tokens. Due rows
        keep that count (`protected`: the most +inf older slots of any due row). A row that
        still holds empty slots (a ragged batch's left padding, or slots given up before) has
        fewer real tokens than the budget, so it keeps them all and gives up empty slots only,
        as it would alone. Rows that keep fewer than the row that keeps the most carry empty
        slots along, -1 in idx (`with_empty_slots`). Prompts of one length: every row is due at
        every eviction, and idx holds no -1."""
        L, live = self.length, self.ranking(cache)
        real = self.positions[:, :L] >= 0  # (B, L): False at empty slots
        due = real.all(dim=1)  # (B,)
        protected = int((live[:, :L - self.window] == INF).sum(dim=1).masked_fill(~due, 0).max())
        n_keep = self.window + max(protected, math.floor(self.ratio * (L - self.window)))
        # The budget is a hard bound: a row whose protected tokens fill the cache (an answer
        # that never ends) loses its oldest protected tokens, one per step.
        idx = select_keep(live, min(n_keep, L - 1), self.window)  # (B, n_keep): what the due rows keep
        return idx if bool(due.all()) else with_empty_slots(idx, due, real)

    def ranking(self, cache=None) -> torch.Tensor:
        """What select() ranks the live slots by (B, L): the selection scores, +inf for each
        row's protected prompt, whatever the scores say, and -inf for empty slots (left padding:
        never protected; select never lets a row keep one over a real token)."""
        live = self.selection_scores(cache)
        pos = self.positions[:, :self.length]  # (B, L)
        if self.prompt_len:
            live = live.masked_fill((pos >= 0) & (pos < self.prompt_end), INF)
        return live.masked_fill(pos < 0, -INF)

    def selection_scores(self, cache) -> torch.Tensor:
        """The live slots' scores (B, L): the recorded ones. R-KV adds the keys' redundancy here,
        read from the cache."""
        return self.scores[:, :self.length]

    def keep(self, idx: torch.Tensor):
        """Follow the cache's compaction: the kept slots' scores move with them; an entry -1
        makes its slot empty, as in model.KVCache.keep."""
        n, src = idx.shape[1], idx.clamp(min=0)
        self.scores[:, :n] = self.scores[:, :self.length].gather(1, src).masked_fill(idx < 0, 0.0)
        self.positions[:, :n] = self.positions[:, :self.length].gather(1, src).masked_fill(idx < 0, -1)
        self.length = n


class Full(Policy):
    """The full cache: never evicts (the paper's "Transformers" baseline)."""

    name = "full"

    def __init__(self):
        self.budget, self.window, self.ratio, self.prompt_len, self.prompt_end = None, 0, 1.0, 0, 0

    def should_evict(self, cache_length):
        return False


class Window(Policy):
    """Only the most recent tokens: the score is the position, so the newest win."""

    name = "window"

    def score(self, tokens, hidden, positions):
        return positions.float().expand(tokens.shape)


class StreamingLLM(Policy):
    """Attention sinks + window (Xiao et al., "Efficient Streaming Language Models with
    Attention Sinks", arXiv 2309.17453): the first `n_sink` tokens are never evicted, the rest
    are kept newest first."""

    name = "streaming"

    def __init__(self, budget, window, ratio=0.3, n_sink=4, prompt_len=0):
        super().__init__(budget, window, ratio, prompt_len)
        if n_sink + window >= budget:
            raise ValueError(f"--budget {budget} must exceed the {n_sink} sink tokens plus --window {window}")
        self.n_sink = n_sink

    def score(self, tokens, hidden, positions):
        s = positions.float().masked_fill(positions < self.n_sink, INF)
        return s.expand(tokens.shape)


class DynTS(Policy):
    """The predicted importance of each token, computed once, when the token is the model's
    input. Prompt tokens and answer tokens (after `</think>`) get +inf: never evicted. Tokens
    after a row's end-of-text are padding and get -inf. Only what the model generated after
    the prompt decides what is answer or padding: special tokens inside the prompt do not."""

    name = "dynts"

    def __init__(self, budget, window, ratio, predictor: ImportancePredictor, prompt_len: int | list[int],
                 end_think_id: int, eot_id: int, protect_prompt: bool = True):
        super().__init__(budget, window, ratio, prompt_len if protect_prompt else 0)
        self.predictor, self.end_think_id, self.eot_id = predictor, end_think_id, eot_id
        self.question_len = prompt_len  # generation starts here, protected or not (a list: per row)
        self.question_end = row_ends(prompt_len)  # the same, to compare with positions (B, T)

    def reset(self, batch_size, capacity, device=None):
        super().reset(batch_size, capacity, device)
        if torch.is_tensor(self.question_end):
            self.question_end = self.question_end.to(device)
        self.answering = torch.zeros(batch_size, dtype=torch.bool, device=device)  # wrote </think>
        self.done = torch.zeros(batch_size, dtype=torch.bool, device=device)  # wrote end-of-text

    def predict(self, hidden) -> torch.Tensor:
        """The predicted importance (B, T) of tokens from their hidden states (B, T, C)."""
        return self.predictor(hidden).float()

    def score(self, tokens, hidden, positions):
        s = self.predict(hidden)  # (B, T)
        generated = tokens.masked_fill((positions < self.question_end).expand(tokens.shape), -1)  # the prompt: no token
        answering = self.answering[:, None] | strictly_after(generated, self.end_think_id)  # (B, T)
        done = self.done[:, None] | strictly_after(generated, self.eot_id)  # (B, T)
        s = s.masked_fill(answering, INF).masked_fill(done, -INF)
        self.answering |= (generated == self.end_think_id).any(dim=1)
        self.done |= (generated == self.eot_id).any(dim=1)
        return s


# -----------------------------------------------------------------------------
# Ablations of DynTS (Sec. 5 of the paper): the same protection, other thinking-token scores


class RandomThinking(DynTS):
    """Ablation: random thinking tokens instead of the predicted ones."""

    name = "dynts-random"
    graph_safe = False  # its generator's state would not advance in a replayed graph

    def reset(self, batch_size, capacity, device=None):
        super().reset(batch_size, capacity, device)
        self.generator = torch.Generator(device=device).manual_seed(0)

    def predict(self, hidden):
        return torch.rand(hidden.shape[:2], device=hidden.device, generator=self.generator)


class BottomK(DynTS):
    """Ablation: the least important thinking tokens by the predictor."""

    name = "dynts-bottom"

    def predict(self, hidden):
        return -super().predict(hidden)


class NoProtectedPrompt(DynTS):
    """Ablation: the prompt competes with the thinking tokens, scored by the predictor."""

    name = "dynts-noprompt"

    def __init__(self, budget, window, ratio, predictor, prompt_len, end_think_id, eot_id):
        super().__init__(budget, window, ratio, predictor, prompt_len, end_think_id, eot_id, protect_prompt=False)


# The ablations as the official code ran them: nothing protected, the prompt included.


class RandomAll(RandomThinking):
    """Official ablation "random": random scores for every older slot, the prompt and the
    answer included (the official code draws over all older slots, ignoring +inf)."""

    name = "random-all"

    def __init__(self, budget, window, ratio, predictor, prompt_len, end_think_id, eot_id):
        super().__init__(budget, window, ratio, predictor, prompt_len, end_think_id, eot_id, protect_prompt=False)

    def score(self, tokens, hidden, positions):
        return self.predict(hidden)


class BottomAll(DynTS):
    """Official ablation "bottom-k": the lowest predicted scores win; the prompt (+inf there)
    goes last, so it is evicted first."""

    name = "bottom-all"

    def __init__(self, budget, window, ratio, predictor, prompt_len, end_think_id, eot_id):
        super().__init__(budget, window, ratio, predictor, prompt_len, end_think_id, eot_id, protect_prompt=False)

    def score(self, tokens, hidden, positions):
        return -super().score(tokens, hidden, positions).masked_fill(positions < self.question_end, INF)


class NoQuestion(DynTS):
    """Official ablation "no question": the prompt's scores are set to 0 (the lowest a
    Softplus gives), so the prompt goes before any thinking token."""

    name = "noquestion"

    def __init__(self, budget, window, ratio, predictor, prompt_len, end_think_id, eot_id):
        super().__init__(budget, window, ratio, predictor, prompt_len, end_think_id, eot_id, protect_prompt=False)

    def score(self, tokens, hidden, positions):
        return super().score(tokens, hidden, positions).masked_fill(positions < self.question_end, 0.0)


# -----------------------------------------------------------------------------
# The paper's other baselines: attention-based scores, and separators


class H2O(Policy):
    """Heavy-Hitter Oracle (Zhang et al., NeurIPS 2023, arXiv 2306.14048): a slot's score is
    the attention it has received, summed over every step since its token was written. (The
    official DynTS baseline code overwrites the sum with the last step's attention; this one
    accumulates, as H2O defines it.)"""

    name = "h2o"
    needs_attention = True

    def add_attention(self, attn):
        self.scores[:, :self.length] += attn


class H2OLast(Policy):
    """H2O as the official DynTS baseline code ran it: a slot's score is the attention it
    received at the last step only (the sum overwritten, not accumulated)."""

    name = "h2o-last"
    needs_attention = True

    def add_attention(self, attn):
        self.scores[:, :self.length] = attn


class SnapKV(Policy):
    """SnapKV (Li et al., 2024, arXiv 2404.14469): a slot's score is the attention it received
    from the last `obs_window` queries before an eviction, max-pooled over `kernel` neighbouring
    slots so that a kept token keeps its context."""

    name = "snapkv"
    needs_attention = True

    def __init__(self, budget, window, ratio=0.3, obs_window=32, kernel=7, prompt_len=0):
        super().__init__(budget, window, ratio, prompt_len)
        self.obs_window, self.kernel = obs_window, kernel

    def add_attention(self, attn):
        # A row's eviction comes when it holds `budget` real tokens: is this one of the last queries before it?
        near = (self.positions[:, :self.length] >= 0).sum(dim=1) > self.budget - self.obs_window  # (B,)
        self.scores[:, :self.length] += torch.where(near[:, None], attn, 0.0)

    def selection_scores(self, cache):
        empty = self.positions[:, :self.length] < 0  # (B, L): an empty slot lends its neighbours nothing
        s = self.scores[:, None, :self.length].masked_fill(empty[:, None], -INF)  # (B, 1, L)
        return F.max_pool1d(s, self.kernel, stride=1, padding=self.kernel // 2)[:, 0].masked_fill(empty, 0.0)

    def keep(self, idx):
        evicted = (idx >= 0).sum(dim=1) < (self.positions[:, :self.length] >= 0).sum(dim=1)  # (B,): lost a real token
        super().keep(idx)
        self.scores.masked_fill_(evicted[:, None], 0.0)  # their next eviction observes its own window


class RKV(SnapKV):
    """R-KV (Cai et al., 2025, arXiv 2505.24133), redundancy-aware compression for reasoning
    traces: score = lam * importance - (1 - lam) * redundancy. Importance is SnapKV's pooled
    attention of the last `obs_window` queries; the redundancy of a slot is the mean cosine
    similarity of its key to the other live keys, averaged over layers and KV heads. Each is
    normalized over the slots of a row (importance to sum 1, redundancy by softmax)."""

    name = "rkv"

    def __init__(self, budget, window, ratio=0.3, obs_window=8, kernel=7, lam=0.1, prompt_len=0):
        super().__init__(budget, window, ratio, obs_window, kernel, prompt_len)
        self.lam = lam

    def selection_scores(self, cache):
        importance = super().selection_scores(cache)  # (B, L)
        importance = importance / importance.sum(dim=1, keepdim=True).clamp_min(1e-12)
        L = self.length
        k = F.normalize(cache.kv[:, 0, :, :, :L].float(), dim=-1)  # (n_layer, B, Hkv, L, D)
        real = self.positions[:, :L] >= 0  # (B, L)
        others = max(L - 1, 1)  # the other live keys
        if not real.all():  # (a ragged batch) an empty slot's key, garbage, is nobody's neighbour
            k = k * real[None, :, None, :, None]
            others = (real.sum(dim=1) - 1).clamp(min=1)[None, :, None, None]  # (1, B, 1, 1)
        # mean_i cos(k_i, k_j) over the other keys i = (k_j . sum_i k_i - 1) / (L - 1): O(L), not O(L^2)
        similarity = ((k * k.sum(dim=3, keepdim=True)).sum(dim=-1) - 1) / others  # (n_layer, B, Hkv, L)
        redundancy = similarity.mean(dim=(0, 2)).masked_fill(~real, -INF).softmax(dim=1)  # (B, L)
        return self.lam * importance - (1 - self.lam) * redundancy


class SepLLM(Policy):
    """SepLLM (Chen et al., 2024, arXiv 2412.12094): separators (punctuation, newline, space)
    stand for the segments they close. The first `n_sink` tokens are never evicted; of the
    other older tokens the separators come first, newest first, then the newest of the rest,
    up to the ratio."""

    name = "sepllm"
    SEPARATORS = ".,;:!?\n "

    def __init__(self, budget, window, ratio, separator_ids, n_sink=4, prompt_len=0):
        super().__init__(budget, window, ratio, prompt_len)
        if n_sink + window >= budget:
            raise ValueError(f"--budget {budget} must exceed the {n_sink} sink tokens plus --window {window}")
        self.separator_ids, self.n_sink = torch.tensor(separator_ids), n_sink

    def score(self, tokens, hidden, positions):
        is_sep = torch.isin(tokens, self.separator_ids.to(tokens.device))  # (B, T)
        s = positions.float() + is_sep * float(2 ** 20)  # separators rank above any position
        return s.masked_fill((positions < self.n_sink).expand_as(s), INF)


def strictly_after(tokens: torch.Tensor, token_id: int) -> torch.Tensor:
    """(B, T) bool: the positions after the first `token_id` of each row of tokens (B, T)."""
    hit = (tokens == token_id).long()
    return (hit.cumsum(dim=1) - hit) > 0
