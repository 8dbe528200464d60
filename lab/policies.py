"""Every policy by name: the paper's baselines, DynTS's ablations and a lexical control, on
dynts.Policy's interface, and the registry that generate.py, profile.py and lab/eval.py build policies from.

A baseline's name + "+p" protects the prompt as DynTS does (the paper's baselines did not).
The baselines run as the official DynTS code runs them (one kept set for every layer and head);
the `-native` ones run H2O, SnapKV and R-KV as their own papers do (a set per layer and kv head).
The ablations come both as this project runs them (the prompt protected) and as the official
DynTS code ran them (nothing protected). docs/FIDELITY.md says where each follows the official
code and where it differs.
"""

from string import ascii_uppercase

import torch
import torch.nn.functional as F

from dynts import INF, DynTS, Full, Policy
from model import END_THINK

# -----------------------------------------------------------------------------
# Baselines that score by position or by token


class Window(Policy):
    """Only the most recent tokens: the score is the position, so the newest win."""

    name = "window"
    scores_are_positions = True  # the pictures shade no score: it is the position (the newest win)

    def score(self, tokens, hidden, positions):
        return positions.float().expand(tokens.shape)


class StreamingLLM(Policy):
    """Attention sinks + window (Xiao et al., "Efficient Streaming Language Models with
    Attention Sinks", arXiv 2309.17453): the first `n_sink` tokens are never evicted, the rest
    are kept newest first."""

    name = "streaming"
    scores_are_positions = True  # the pictures shade no score: it is the position (the newest win)

    def __init__(self, budget, window, ratio=0.3, prompt_len=0, protect_prompt=False, n_sink=4):
        super().__init__(budget, window, ratio, prompt_len, protect_prompt)
        if n_sink + window >= budget:
            raise ValueError(f"--budget {budget} must exceed the {n_sink} sink tokens plus --window {window}")
        self.n_sink = n_sink

    def score(self, tokens, hidden, positions):
        s = positions.float().masked_fill(positions < self.n_sink, INF)
        return s.expand(tokens.shape)


class SepLLM(Policy):
    """SepLLM (Chen et al., 2024, arXiv 2412.12094): separators (punctuation, newline, space)
    stand for the segments they close. The first `n_sink` tokens are never evicted; of the
    other older tokens the separators come first, newest first, then the newest of the rest,
    up to the ratio."""

    name = "sepllm"
    scores_are_positions = True  # the pictures shade no score: it is the position (the newest win)
    SEPARATORS = ".,;:!?\n "

    def __init__(self, budget, window, ratio=0.3, prompt_len=0, protect_prompt=False, separator_ids=(), n_sink=4):
        super().__init__(budget, window, ratio, prompt_len, protect_prompt)
        if n_sink + window >= budget:
            raise ValueError(f"--budget {budget} must exceed the {n_sink} sink tokens plus --window {window}")
        self.separator_ids, self.n_sink = torch.tensor(separator_ids, dtype=torch.long), n_sink

    def score(self, tokens, hidden, positions):
        is_sep = torch.isin(tokens, self.separator_ids.to(tokens.device))  # (B, T)
        s = positions.float() + is_sep * float(2 ** 20)  # separators rank above any position
        return s.masked_fill((positions < self.n_sink).expand_as(s), INF)


# -----------------------------------------------------------------------------
# Baselines that score by attention


class H2O(Policy):
    """Heavy-Hitter Oracle (Zhang et al., NeurIPS 2023, arXiv 2306.14048): a slot's score is
    the attention it has received, summed over every step since its token was written. (The
    official DynTS baseline code overwrites the sum with the last step's attention; this one
    accumulates, as H2O defines it.)"""

    name = "h2o"
    needs_attention = True

    def add_attention(self, attention):
        self.scores[..., :self.length] += attention  # (B, L), or per head (n_layer, B, Hkv, L)


class H2OLast(Policy):
    """H2O as the official DynTS baseline code ran it: a slot's score is the attention it
    received at the last step only (the sum overwritten, not accumulated)."""

    name = "h2o-last"
    needs_attention = True

    def add_attention(self, attention):
        self.scores[:, :self.length] = attention


class SnapKV(Policy):
    """SnapKV (Li et al., 2024, arXiv 2404.14469): a slot's score is the attention it received
    from the last `obs_window` queries before an eviction, max-pooled over `kernel` neighbouring
    slots so that a kept token keeps its context."""

    name = "snapkv"
    needs_attention = True

    def __init__(self, budget, window, ratio=0.3, prompt_len=0, protect_prompt=False, obs_window=32, kernel=7):
        super().__init__(budget, window, ratio, prompt_len, protect_prompt)
        self.obs_window, self.kernel = obs_window, kernel

    def add_attention(self, attention):
        if self.length > self.budget - self.obs_window:  # one of the last queries before the eviction
            self.scores[..., :self.length] += attention

    def eviction_scores(self, cache):
        s = self.scores[..., :self.length]  # (B, L), or per head (n_layer, B, Hkv, L)
        pooled = F.max_pool1d(s.reshape(-1, 1, s.shape[-1]), self.kernel, stride=1, padding=self.kernel // 2)
        return pooled.view(s.shape)

    def keep_scores(self, idx):
        super().keep_scores(idx)
        self.scores.zero_()  # the next eviction observes its own window


class RKV(SnapKV):
    """R-KV (Cai et al., 2025, arXiv 2505.24133), redundancy-aware compression for reasoning
    traces: score = lam * importance - (1 - lam) * redundancy. Importance is SnapKV's pooled
    attention of the last `obs_window` queries; the redundancy of a slot is the mean cosine
    similarity of its key to the other live keys, averaged over layers and KV heads. Each is
    normalized over the slots of a row (importance to sum 1, redundancy by softmax)."""

    name = "rkv"

    def __init__(self, budget, window, ratio=0.3, prompt_len=0, protect_prompt=False, obs_window=8, kernel=7,
                 lam=0.1):
        super().__init__(budget, window, ratio, prompt_len, protect_prompt, obs_window, kernel)
        self.lam = lam

    def eviction_scores(self, cache):
        importance = super().eviction_scores(cache)  # (B, L)
        importance = importance / importance.sum(dim=1, keepdim=True).clamp_min(1e-12)
        L = self.length
        k = F.normalize(cache.kv[:, 0, :, :, :L].float(), dim=-1)  # (n_layer, B, Hkv, L, D)
        # mean_i cos(k_i, k_j) over the other keys i = (k_j . sum_i k_i - 1) / (L - 1): O(L), not O(L^2)
        similarity = ((k * k.sum(dim=3, keepdim=True)).sum(dim=-1) - 1) / max(L - 1, 1)  # (n_layer, B, Hkv, L)
        redundancy = similarity.mean(dim=(0, 2)).softmax(dim=1)  # (B, L)
        return self.lam * importance - (1 - self.lam) * redundancy


# -----------------------------------------------------------------------------
# The baselines as their own papers run them: a kept set per (layer, row, kv head)


class PerHead(Policy):
    """A policy whose every layer, row and kv head keeps its own slots, as H2O, SnapKV and R-KV
    choose: scores and positions are (n_layer, B, Hkv, capacity), the model's attention comes
    per (layer, kv head), and an eviction hands the cache an index (n_layer, B, Hkv, n_keep).
    Every head keeps the same count, so the cache stays rectangular. Ranking, selection and
    compaction are dynts.Policy's own, on every row of heads. What an eviction returns, for the
    counters and the pictures, is layer 0's kv head 0."""

    needs_attention = True

    def reset(self, batch_size, capacity, device=None):
        self.batch_size, self.capacity, self.device = batch_size, capacity, device
        self.scores = self.positions = None  # (n_layer, B, Hkv, capacity), once the first attention tells the shape
        self.length = 0

    def observe(self, tokens, hidden, positions, attention=None):
        T = tokens.shape[1]
        if self.scores is None:
            shape = (*attention.shape[:3], self.capacity)
            self.scores = torch.zeros(shape, device=self.device)
            self.positions = torch.zeros(shape, dtype=torch.long, device=self.device)
        self.scores[..., self.length:self.length + T] = 0.0
        self.positions[..., self.length:self.length + T] = positions.expand(tokens.shape)[None, :, None]
        self.length += T
        self.add_attention(attention)  # (n_layer, B, Hkv, S), this step's tokens included

    def evict(self, cache):
        idx, ranking = super().evict(cache)  # (n_layer, B, Hkv, n_keep), (n_layer, B, Hkv, L)
        return idx[0, :, 0], ranking[0, :, 0]  # for the counters and the pictures


class H2ONative(PerHead, H2O):
    """H2O as its paper runs it (Zhang et al., NeurIPS 2023, arXiv 2306.14048, Algorithm 1):
    each layer's kv head keeps its own heavy hitters, the tokens with the most attention summed
    over every query since they were written (averaged over the query heads that share the kv
    head), beside the recent window; once the cache holds the budget, one token leaves per step,
    so the cache stays full: each head's lowest-scoring token outside the window (ties: the
    oldest). Nothing is compacted: the head's last slot moves into the freed one, and the next
    token is written after it (the paper writes it into the freed slot: the same kept sets, one
    slot moved a step). So a head's slots are not in position order, and the window is read from
    the positions. `ratio` is not used: the budget decides."""

    name = "h2o-native"
    reads_ratio = False

    def evict(self, cache):
        L = self.length
        ranking = self.ranking(cache)  # (n_layer, B, Hkv, L): the protected prompt at +inf
        positions = self.positions[..., :L]
        older = ranking.masked_fill(positions >= cache.seen - self.window, INF).masked_fill(ranking.isnan(), -INF)
        lowest = older == older.min(dim=-1, keepdim=True).values
        freed = positions.masked_fill(~lowest, cache.seen).argmin(dim=-1)  # (n_layer, B, Hkv): the oldest lowest
        move_last_into(cache, freed)
        for state in (self.scores, self.positions):  # the policy's slots follow the cache's
            state.scatter_(-1, freed.unsqueeze(-1), state[..., L - 1:L].clone())
        self.length = L - 1
        B = freed.shape[1]
        slots = torch.arange(L, device=freed.device).expand(B, L)
        kept = slots[slots != freed[0, :, 0, None]].view(B, L - 1)  # for the counters and the pictures
        return kept, ranking[0, :, 0]


def move_last_into(cache, slots: torch.Tensor):
    """Free one slot per layer, row and kv head, slots (n_layer, B, Hkv): the head's last live
    slot moves into it, so that the first length - 1 slots stay the live ones. `pos` follows
    layer 0's kv head 0, as KVCache.keep's per-head index does."""
    last = cache.length - 1
    L, _, B, Hkv, _, D = cache.kv.shape
    moved = cache.kv[:, :, :, :, last:last + 1].clone()  # (L, 2, B, Hkv, 1, D)
    cache.kv.scatter_(4, slots.view(L, 1, B, Hkv, 1, 1).expand(L, 2, B, Hkv, 1, D), moved)
    cache.pos.scatter_(1, slots[0, :, 0:1], cache.pos[:, last:last + 1].clone())
    cache.length = last


class SnapKVNative(PerHead, SnapKV):
    """SnapKV as its paper runs it (Li et al., 2024, arXiv 2404.14469), per layer and kv head:
    a slot's score is the attention it received from the last `obs_window` queries before an
    eviction (averaged over the query heads that share the kv head, as its GQA code does),
    max-pooled over `kernel` neighbouring slots; each head keeps its own top slots. The paper
    compresses the prompt once; here it is applied at each eviction, on the shared schedule.
    SnapKV's scoring, on PerHead's scores."""

    name = "snapkv-native"


def key_redundancy(keys: torch.Tensor, threshold: float, max_elements: int = 2**27) -> torch.Tensor:
    """R-KV's redundancy of each key among the keys of its head, keys (N, L, D) -> (N, L): the
    mean cosine similarity to the other keys, softmax-normalized over the head's keys, where
    each key's similarity to its newest duplicate (the last key more similar than `threshold`)
    does not count, so that of a run of duplicates the newest looks least redundant. (A key
    with no duplicate drops its similarity to key 0, as R-KV's code has it.) In chunks of
    heads, each (chunk, L, L) of at most `max_elements` similarities (512 MiB), whatever the batch."""
    out = []
    chunk = max(1, max_elements // keys.shape[1] ** 2)
    for a in range(0, keys.shape[0], chunk):
        k = F.normalize(keys[a:a + chunk].float(), dim=-1)
        sim = k @ k.transpose(1, 2)  # (n, L, L)
        sim.diagonal(dim1=1, dim2=2).zero_()
        slots = torch.arange(sim.shape[-1], device=sim.device, dtype=torch.int32)  # (n, L, L) below: not int64
        newest = torch.where(sim > threshold, slots, 0).max(dim=-1).values  # (n, L): each key's newest duplicate
        sim.scatter_(2, newest.long()[..., None], 0.0)
        out.append(sim.mean(dim=-1).softmax(dim=-1))
    return torch.cat(out)


class BufferSchedule:
    """R-KV's schedule, whatever the scores: decoding fills a `buffer` of slots beyond what an
    eviction keeps, then compresses back, so the cache holds at most `budget` = kept + buffer and
    each eviction keeps budget - buffer: the cache stays near its budget. `ratio` is not used."""

    reads_ratio = False

    @property
    def buffer(self) -> int:
        return min(128, (self.budget - self.window) // 2)  # R-KV's 128; a small budget: half its older slots

    def n_keep(self, L, protected):
        return max(L - self.buffer, self.window + protected)


class RKVNative(BufferSchedule, PerHead, SnapKV):
    """R-KV as its paper runs it (Cai et al., 2025, arXiv 2505.24133), per layer and kv head:
    score = lam * importance - (1 - lam) * redundancy, importance SnapKV's pooled attention of
    the last `obs_window` queries as a mean over them; redundancy `key_redundancy` with its
    similarity threshold and its newest-duplicate rule; on R-KV's schedule (`BufferSchedule`).
    Left out: R-KV's own recent window of 8 tokens; the recent `window` is kept here, as by
    every policy."""

    name = "rkv-native"

    def __init__(self, budget, window, ratio=0.3, prompt_len=0, protect_prompt=False, obs_window=8, kernel=7,
                 lam=0.1, threshold=0.5):
        super().__init__(budget, window, ratio, prompt_len, protect_prompt, obs_window, kernel)
        self.lam, self.threshold = lam, threshold
        self.observed = 0  # queries summed into the scores since the last eviction

    def add_attention(self, attention):
        self.observed += self.length > self.budget - self.obs_window  # SnapKV's test, before it adds
        super().add_attention(attention)

    def eviction_scores(self, cache):
        importance = super().eviction_scores(cache) / max(self.observed, 1)  # (n_layer, B, Hkv, L)
        keys = cache.kv[:, 0, :, :, :self.length]  # (n_layer, B, Hkv, L, D)
        redundancy = key_redundancy(keys.flatten(0, 2), self.threshold).view(importance.shape)
        return self.lam * importance - (1 - self.lam) * redundancy

    def keep_scores(self, idx):
        super().keep_scores(idx)  # (SnapKV's: the scores start again)
        self.observed = 0


class RKVNativeCut(RKVNative):
    """An ablation of R-KV, not its paper's method: R-KV's per-head scores (importance and
    redundancy, as `rkv-native`) on DynTS's schedule: nothing leaves until the cache holds the
    budget, then it is cut to the window and `ratio` of the older slots (dynts.Policy.n_keep).
    Beside `rkv-native` only the schedule differs; beside DynTS, at the same cache, only the scores."""

    name = "rkv-native-cut"
    reads_ratio = True

    def n_keep(self, L, protected):
        return Policy.n_keep(self, L, protected)


class RKVBuffer(BufferSchedule, RKV):
    """An ablation of R-KV, not its paper's method: the official form's scores (`rkv`, one set
    for every layer and head) on R-KV's own schedule (`rkv-native`'s buffer). With `rkv`,
    `rkv-native-cut` and `rkv-native` it makes the two-by-two: scores (official, per head) by
    schedule (DynTS's cut, R-KV's buffer)."""

    name = "rkv-buffer"


class DynTSBuffer(BufferSchedule, DynTS):
    """An ablation of DynTS's schedule, not the paper's method: DynTS's predicted scores on R-KV's
    schedule (`rkv-native`'s buffer): once the cache holds the budget, an eviction frees `buffer`
    slots (128, or half the older ones for a small budget), not the cut to the window and `ratio` of
    the older slots. Beside `dynts` only the schedule differs; beside `rkv-native`, only the scores
    (and R-KV's per-head sets)."""

    name = "dynts-buffer"


# -----------------------------------------------------------------------------
# DynTS's ablations (Sec. 5 of the paper): the same protection, other thinking-token scores


class RandomThinking(DynTS):
    """Ablation: random thinking tokens instead of the predicted ones."""

    name = "dynts-random"
    needs_predictor = False
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

    def __init__(self, budget, window, ratio, prompt_len, predictor, end_think_id, eot_id):
        super().__init__(budget, window, ratio, prompt_len, predictor, end_think_id, eot_id, protect_prompt=False)


# The ablations as the official code ran them: nothing protected, the prompt included.


class RandomAll(RandomThinking):
    """Official ablation "random": random scores for every older slot, the prompt and the
    answer included (the official code draws over all older slots, ignoring +inf)."""

    name = "random-all"

    def __init__(self, budget, window, ratio, prompt_len, predictor, end_think_id, eot_id):
        super().__init__(budget, window, ratio, prompt_len, predictor, end_think_id, eot_id, protect_prompt=False)

    def score(self, tokens, hidden, positions):
        return self.predict(hidden)


class BottomAll(NoProtectedPrompt):
    """Official ablation "bottom-k": the lowest predicted scores win, so the prompt and the
    answer, which DynTS ranks highest, go first after the padding."""

    name = "bottom-all"

    def score(self, tokens, hidden, positions):
        s = super().score(tokens, hidden, positions)
        return (-s.masked_fill(positions < self.prompt_len, INF)).masked_fill(s == -INF, -INF)  # padding: never +inf


class NoQuestion(NoProtectedPrompt):
    """Official ablation "no question": the prompt's scores are set to 0 (the lowest a
    Softplus gives), so the prompt goes before any thinking token."""

    name = "noquestion"

    def score(self, tokens, hidden, positions):
        return super().score(tokens, hidden, positions).masked_fill(positions < self.prompt_len, 0.0)


# -----------------------------------------------------------------------------
# A control that knows the task's template and nothing else


class Lexical(DynTS):
    """The lexical control: DynTS's rule (the prompt and the answer protected, the same budget,
    window and ratio) with a hand-written score in place of the predictor: 1 for the two tokens
    after an upper-case letter and "=" (the value of a result statement, "so A=kl."), 0 for any
    other. It knows where the task writes its results, not which of them the answer will read:
    a learned predictor should beat it only where statements in the template are not needed."""

    name = "lexical"
    needs_predictor = False

    def __init__(self, budget, window, ratio, prompt_len, predictor, end_think_id, eot_id, letter_ids=(),
                 equals_id=-1):
        super().__init__(budget, window, ratio, prompt_len, None, end_think_id, eot_id)
        self.letter_ids, self.equals_id = torch.tensor(letter_ids, dtype=torch.long), equals_id

    def reset(self, batch_size, capacity, device=None):
        super().reset(batch_size, capacity, device)
        self.letter_ids = self.letter_ids.to(device)
        self.before = torch.full((batch_size, 3), -1, dtype=torch.long, device=device)  # each row's last 3 tokens

    def score(self, tokens, hidden, positions):
        T = tokens.shape[1]
        seen = torch.cat([self.before, tokens], dim=1)  # (B, 3 + T): token t is seen[:, 3 + t]
        self.before.copy_(seen[:, -3:])  # in place, so that a replayed CUDA graph carries it on
        opens = torch.isin(seen[:, :-1], self.letter_ids) & (seen[:, 1:] == self.equals_id)  # (B, 2 + T): "A=" at j
        value = opens[:, 1:T + 1] | opens[:, :T]  # token t is 1 or 2 after "A=" (which starts at 3 + t - 2 or - 3)
        return self.mark_answer(value.float(), tokens, positions)


# -----------------------------------------------------------------------------
# The registry: a new policy is one class above and one entry here


BASELINES = (Window, StreamingLLM, SepLLM, H2O, H2OLast, SnapKV, RKV)  # each also as name + "+p"
NATIVE = (H2ONative, SnapKVNative, RKVNative)  # the baselines as their papers run them, each also as name + "+p"
SCHEDULES = (RKVNativeCut, RKVBuffer)  # R-KV's scores and schedule swapped (ablations), each also as name + "+p"
ABLATIONS = (RandomThinking, BottomK, NoProtectedPrompt, RandomAll, BottomAll, NoQuestion, DynTSBuffer)
YOURS = ()  # your own policies: run by name (each also as name + "+p"), in none of eval.py's sets
CLASSES = {cls.name: cls for cls in (Full, DynTS, Lexical, *BASELINES, *NATIVE, *SCHEDULES, *ABLATIONS, *YOURS)}
NAMES = ["full", "dynts", "lexical"] + [c.name for c in BASELINES] + [c.name + "+p" for c in BASELINES] + \
        [c.name for c in NATIVE] + [c.name + "+p" for c in NATIVE] + \
        [c.name for c in SCHEDULES] + [c.name + "+p" for c in SCHEDULES] + [c.name for c in ABLATIONS] + \
        [c.name for c in YOURS] + [c.name + "+p" for c in YOURS]


def policy_class(name: str) -> type[Policy]:
    """The class behind a policy's name ("h2o+p" is H2O with the prompt protected)."""
    cls = CLASSES.get(name.removesuffix("+p"))
    if cls is None or name not in NAMES:
        raise ValueError(f"--policy {name!r}: choose one of {', '.join(NAMES)}")
    return cls


def uses_ratio(name: str) -> bool:
    """Whether `ratio` changes what the policy keeps (not for Full, one token a step, or R-KV's buffer)."""
    return policy_class(name).reads_ratio


def needs_attention(name: str) -> bool:
    return policy_class(name).needs_attention


def needs_predictor(name: str) -> bool:
    return policy_class(name).needs_predictor


def make_policy(name, budget, window, ratio, prompt_len, predictor=None, enc=None, end_think_id=None,
                eot_id=None) -> Policy:
    """A policy by name, for prompts of `prompt_len` tokens. DynTS's `</think>` and end-of-text
    ids, and SepLLM's separators, are the encoding's `enc`, unless given."""
    cls = policy_class(name)
    if cls is Full:
        return Full()
    if issubclass(cls, DynTS):
        end_think_id = enc.encode_single_token(END_THINK) if end_think_id is None else end_think_id
        extra = dict(letter_ids=[enc.encode_single_token(c) for c in ascii_uppercase],
                     equals_id=enc.encode_single_token("=")) if cls is Lexical else {}
        return cls(budget, window, ratio, prompt_len, predictor, end_think_id, enc.eot_token if eot_id is None else eot_id,
                   **extra)
    extra = dict(separator_ids=[enc.encode_single_token(c) for c in SepLLM.SEPARATORS]) if cls is SepLLM else {}
    if uses_ratio(name):
        extra["ratio"] = ratio  # a schedule of its own reads none, so none is checked (flags.py refuses it)
    policy = cls(budget, window, prompt_len=prompt_len, protect_prompt=name.endswith("+p"), **extra)
    policy.name = name  # "h2o+p" in summaries and pictures, not the class's "h2o"
    return policy
