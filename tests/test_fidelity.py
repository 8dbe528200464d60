"""Fidelity to the official code (Robin930/DynTS @ a55dc37): where we keep the same tokens,
and where we differ on purpose. docs/fidelity-table.md lists each difference with its reason
and names the test here that pins it down.

The official rules, in words (inference/dynts.py, h2o.py, snapkv.py, rkv.py, models/llama.py,
verl_sft_fsdp.py):

1. Trigger. The decode loop checks `kv_length >= budget`, where kv_length was measured at the
   end of the previous step, before this step's token was written: it evicts when the cache
   holds budget + 1 slots. It records its peak after the eviction, so it reports `budget`.
2. Count. Of the L slots, it keeps the last `window` and, of the L - window older ones, the top
   `int((L - window) * ratio)` by `torch.topk`. No floor: when protected (+inf) slots outnumber
   that count, protected slots are evicted too.
3. Ties go to the earliest slot (torch.topk on CUDA). NaN wins: topk ranks it above +inf.
4. Scores. The prompt scores +inf. A decoded token is scored once, when it is the model's input,
   after the flag "still thinking" has been cleared by that very token: `</think>` itself and
   everything after it (the answer, end-of-text and the padding of finished rows) score +inf.
5. Predictor: Linear(C, 8192) - Softplus - Linear(8192, 2048) - Softplus - Linear(2048, 1) -
   Softplus, no biases, widths fixed whatever C. Loss: sum of w * (pred - y)^2 over thinking
   tokens [think_start + 1, think_end) / their count, w = 5 where y is in [4, 5), else 1;
   y = 1e4 * label (R1-Llama) or label^0.3 / 0.3 * 10 (R1-Qwen).
6. Baselines, with the same trigger and count: H2O's score is the last step's attention (the
   line that accumulates is overwritten by the next one); SnapKV sums the attention of the
   queries from `budget - ob_window` on (33 queries before the first eviction, 34 before the
   later ones, ob_window = 32), not pooled; R-KV's redundancy is, per layer and head, the mean
   cosine similarity a key gets from the others, diagonal zeroed, where each key's newest other
   key with similarity > 0.5 is exempt; softmax per layer and head, then the mean.

With the trigger aligned (the official loop run with budget - 1 evicts at the same length as
ours), our DynTS keeps exactly the same tokens in the paper's regime: prompt well under the kept
count, no ties, no NaN. The official code needs window >= 1 (`x[:, :-0]` is empty), so the
inputs here have one.
"""

import inspect
import math
import types

import pytest
torch = pytest.importorskip("torch")
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import dynts
from lab import policies

INF, NAN = float("inf"), float("nan")
RATIOS = [0.3, 0.4, 0.5]  # the paper's 0.3 / 0.4, and one more


# -----------------------------------------------------------------------------
# The official rules, written out plainly (slow on purpose: a Python sort per row)


def official_count(L: int, window: int, ratio: float) -> int:
    """How many older slots the official code keeps: `k = int(p_is.shape[-1] * self.ratio)`."""
    return int((L - window) * ratio)


def official_select(scores: torch.Tensor, window: int, ratio: float) -> torch.Tensor:
    """The official selection of scores (B, L): the last `window` slots, plus the top
    int((L - window) * ratio) older slots, NaN first (topk ranks NaN above everything), then by
    score, highest first, equal scores earliest slot first. Sorted indices (B, n)."""
    B, L = scores.shape
    k = official_count(L, window, ratio)
    kept = []
    for row in scores.tolist():
        def rank(j):  # smaller sorts first
            return (0, 0.0, j) if math.isnan(row[j]) else (1, -row[j], j)
        top = sorted(range(L - window), key=rank)[:k]
        kept.append(sorted(top) + list(range(L - window, L)))
    return torch.tensor(kept, dtype=torch.long)


def official_token_scores(tokens: list[int], predicted: list[float], prompt_len: int, end_think_id: int):
    """The official score of each token of one row: +inf for the prompt; then the flag
    `unfinished_think` is cleared by the input token *before* that token is scored, so
    `</think>` and every later token (answer, end-of-text, padding) get +inf."""
    scores, thinking = [], True
    for j, (tok, p) in enumerate(zip(tokens, predicted)):
        if j < prompt_len:
            scores.append(INF)
            continue
        thinking = thinking and tok != end_think_id
        scores.append(p if thinking else INF)
    return scores


def run_official(table: torch.Tensor, prompt_len: int, budget: int, window: int, ratio: float) -> dict:
    """The official decode loop on lengths and scores only. table (B, N): the score of the token
    at each position; the prompt is prefilled, then one token per step."""
    B, N = table.shape
    slots = [list(range(prompt_len)) for _ in range(B)]  # the position held by each slot
    kv_length = 0  # set to 0 before the loop, then at the end of every step
    peak = reported = 0
    evictions = []
    for t in range(prompt_len, N):  # this step writes the token at position t
        for row in slots:
            row.append(t)
        peak = max(peak, len(slots[0]))
        if kv_length >= budget:  # is_pruning_step(decode_step, kv_length): last step's length
            held = len(slots[0])
            keep = official_select(table.gather(1, torch.tensor(slots)), window, ratio).tolist()
            slots = [[row[i] for i in k] for row, k in zip(slots, keep)]
            evictions.append((t, held, [list(row) for row in slots]))
        kv_length = len(slots[0])
        reported = max(reported, kv_length)  # info_peak_kvcache, after the eviction
    return dict(peak=peak, reported=reported, evictions=evictions)


# -----------------------------------------------------------------------------
# Our code, driven through its real path (Policy.observe / should_evict / evict)


class Scripted(dynts.Policy):
    """Our Policy (trigger, count, selection, compaction), scoring each token from a table
    (B, N) of scores by position."""

    name = "scripted"

    def __init__(self, table, budget, window, ratio):
        super().__init__(budget, window, ratio)
        self.table = table

    def score(self, tokens, hidden, positions):
        return self.table[:, positions]


def ours_select(scores: torch.Tensor, window: int, ratio: float) -> torch.Tensor:
    """Policy.select on a full cache of L slots holding these scores (B, L)."""
    B, L = scores.shape
    policy = dynts.Policy(budget=L, window=window, ratio=ratio)
    policy.reset(B, L)
    policy.scores[:] = scores
    policy.length = L
    return policy.select(policy.ranking(None))


class Slots:
    """Stands in for the KV cache where only the position each slot holds matters: keep()
    compacts as model.KVCache.keep does."""

    def __init__(self, B: int):
        self.pos = torch.zeros(B, 0, dtype=torch.long)  # (B, L): the position held by each slot

    def keep(self, idx):
        self.pos = self.pos.gather(1, idx)


def run_ours(table: torch.Tensor, prompt_len: int, budget: int, window: int, ratio: float) -> dict:
    """generate.py's loop on lengths and scores only: prefill the prompt, then one token per
    step; after each forward, evict if the policy says so."""
    B, N = table.shape
    policy = Scripted(table, budget, window, ratio)
    policy.reset(B, budget)
    slots = Slots(B)
    peak, evictions = 0, []
    prefill = [list(range(prompt_len))] if prompt_len else []
    for chunk in prefill + [[t] for t in range(prompt_len, N)]:
        T = len(chunk)
        positions = torch.tensor(chunk, dtype=torch.long)
        policy.observe(torch.zeros(B, T, dtype=torch.long), None, positions)
        slots.pos = torch.cat([slots.pos, positions.expand(B, T)], dim=1)
        peak = max(peak, policy.length)
        if policy.should_evict(policy.length):
            held = policy.length
            idx, ranking = policy.evict(slots)
            assert ranking.shape == (B, held) and idx.shape[1] == policy.length == slots.pos.shape[1]
            evictions.append((chunk[-1], held, slots.pos.tolist()))
    return dict(peak=peak, evictions=evictions)


# -----------------------------------------------------------------------------
# Inputs in the paper's regime: prompt well under the kept count, distinct scores


def distinct_scores(B: int, L: int, seed: int) -> torch.Tensor:
    """(B, L) distinct finite scores in [0, 1): a random permutation of 0..L-1, over L."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(L, generator=g).float() / L for _ in range(B)])


@st.composite
def papers_regime(draw, lengths=(50, 400)):
    """One full cache (B, L) in the paper's regime: a window of 20-60% of L, a ratio of the
    paper's, a protected prompt of at most half the kept count, distinct scores elsewhere."""
    B = draw(st.integers(1, 3))
    L = draw(st.integers(*lengths))
    window = draw(st.integers(round(0.2 * L), round(0.6 * L)))
    ratio = draw(st.sampled_from(RATIOS))
    P = draw(st.integers(0, official_count(L, window, ratio) // 2))  # the protected prompt
    scores = distinct_scores(B, L, draw(st.integers(0, 2 ** 31 - 1)))
    scores[:, :P] = INF
    return scores, window, ratio, P


@st.composite
def decode_problem(draw):
    """A whole decode in the paper's regime: scores (B, N) by position for a prompt of P
    protected tokens and 3 x budget decoded ones."""
    first, window, ratio, P = draw(papers_regime(lengths=(40, 160)))
    B, budget = first.shape
    table = distinct_scores(B, P + 3 * budget, draw(st.integers(0, 2 ** 31 - 1)))
    table[:, :P] = INF
    return table, budget, window, ratio, P


# -----------------------------------------------------------------------------
# Agreement


@settings(max_examples=100, deadline=None)
@given(papers_regime())
def test_one_eviction_agrees_in_the_papers_regime(problem):
    scores, window, ratio, P = problem
    ours, theirs = ours_select(scores, window, ratio), official_select(scores, window, ratio)
    assert torch.equal(ours, theirs)
    assert ours.shape[1] == window + official_count(scores.shape[1], window, ratio)
    assert (ours[:, :P] == torch.arange(P)).all()  # the prompt is kept by both


@settings(max_examples=25, deadline=None)
@given(decode_problem())
def test_whole_decode_agrees_once_the_trigger_is_aligned(problem):
    """The official loop run with budget - 1 evicts when it holds `budget` slots, as ours does:
    then every eviction of a whole decode happens at the same step and keeps the same tokens."""
    table, budget, window, ratio, P = problem
    ours = run_ours(table, P, budget, window, ratio)
    theirs = run_official(table, P, budget - 1, window, ratio)
    assert len(ours["evictions"]) >= 2
    assert ours["evictions"] == theirs["evictions"]


def test_keep_count_is_the_same_float_product():
    """Ours floors ratio * (L - window), theirs truncates (L - window) * ratio: the same IEEE
    product (multiplication commutes) and, being non-negative, the same integer. Where the
    product falls just under an integer, both lose the same token: 0.7 * 90 = 62.99999999999999
    keeps 62 older slots, not 63. The paper's ratios never do that on realistic lengths."""
    for n in range(1, 20001):
        for r in RATIOS + [0.7]:
            assert math.floor(r * n) == int(n * r)
        for r, num in ((0.3, 3), (0.4, 4), (0.5, 5)):
            assert int(n * r) == n * num // 10  # exact: no float shortfall
    assert 0.7 * 90 < 63
    scores = distinct_scores(1, 100, seed=0)
    ours, theirs = ours_select(scores, 10, 0.7), official_select(scores, 10, 0.7)
    assert torch.equal(ours, theirs) and ours.shape[1] == 10 + 62


# -----------------------------------------------------------------------------
# Differences, one test per row of docs/fidelity-table.md


@settings(max_examples=25, deadline=None)
@given(decode_problem())
def test_trigger_official_evicts_at_budget_plus_one(problem):
    """Ours evicts when the cache holds `budget` slots; the official loop one step later, at
    budget + 1 (while it reports a peak of `budget`)."""
    table, budget, window, ratio, P = problem
    ours = run_ours(table, P, budget, window, ratio)
    theirs = run_official(table, P, budget, window, ratio)
    assert ours["peak"] == budget
    assert theirs["peak"] == budget + 1 and theirs["reported"] == budget
    assert all(held == budget for _, held, _ in ours["evictions"])
    assert all(held == budget + 1 for _, held, _ in theirs["evictions"])
    assert theirs["evictions"][0][0] == ours["evictions"][0][0] + 1  # the step after ours


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_protected_slots_beyond_the_count_ours_keep_the_prompt_and_the_newest_answer(data):
    """A prompt at the start and answer tokens just before the window outnumber
    k = int((L - window) * ratio). The official code ranks both +inf and keeps the earliest k of
    them. Ours ranks the prompt +inf and the answer ANSWER: it keeps the whole prompt, then the
    newest answer tokens, max(P, k) in all, and no thinking token."""
    L = data.draw(st.integers(30, 300))
    window = data.draw(st.integers(1, L // 2))
    ratio = data.draw(st.sampled_from(RATIOS))
    k = official_count(L, window, ratio)
    n_protected = data.draw(st.integers(k + 1, L - window - 1))
    P = data.draw(st.integers(0, n_protected))  # the prompt; the rest are answer tokens
    prompt, answer = list(range(P)), list(range(L - window - (n_protected - P), L - window))
    scores = distinct_scores(data.draw(st.integers(1, 3)), L, data.draw(st.integers(0, 2 ** 31 - 1)))
    theirs_scores, ours_scores = scores.clone(), scores.clone()
    theirs_scores[:, prompt + answer] = INF
    ours_scores[:, answer], ours_scores[:, prompt] = dynts.ANSWER, INF

    ours, theirs = ours_select(ours_scores, window, ratio), official_select(theirs_scores, window, ratio)
    window_slots, n_answer = list(range(L - window, L)), max(P, k) - P
    for o, t in zip(ours.tolist(), theirs.tolist()):
        assert o == prompt + answer[len(answer) - n_answer:] + window_slots
        assert t == (prompt + answer)[:k] + window_slots


def test_ties_official_keeps_earliest_ours_latest():
    L, window, ratio = 100, 40, 0.3
    k = official_count(L, window, ratio)  # 18
    scores = torch.full((2, L), 0.5)
    ours, theirs = ours_select(scores, window, ratio), official_select(scores, window, ratio)
    recent = list(range(L - window, L))
    assert ours.tolist() == [list(range(L - window - k, L - window)) + recent] * 2
    assert theirs.tolist() == [list(range(k)) + recent] * 2


def test_nan_official_keeps_ours_never():
    L, window, ratio = 100, 40, 0.3
    scores = distinct_scores(2, L, seed=1)
    nan_slots = [3, 17, 42]
    scores[:, nan_slots] = NAN
    ours, theirs = ours_select(scores, window, ratio), official_select(scores, window, ratio)
    for o, t in zip(ours.tolist(), theirs.tolist()):
        assert set(nan_slots) <= set(t)  # NaN wins in topk
        assert not set(nan_slots) & set(o)  # NaN counts as -inf: never over a finite score


END_THINK, EOT = 7, 9
PROMPT = [1, 2, 3]


def dynts_scores(rows: list[list[int]]):
    """Run our DynTS over decoded token rows, one token per step as in generate.py. Returns
    (our scores as select() ranks them, the predictor's scores, the official scores) per row,
    prompt included."""
    torch.manual_seed(0)
    predictor = dynts.ImportancePredictor(8)
    policy = dynts.DynTS(budget=32, window=8, ratio=0.3, predictor=predictor, prompt_len=len(PROMPT),
                         end_think_id=END_THINK, eot_id=EOT)
    B, T = len(rows), len(PROMPT) + len(rows[0])
    tokens = torch.tensor([PROMPT + r for r in rows])  # (B, T)
    hidden = torch.randn(B, T, 8)
    policy.reset(B, 32)
    chunks = [range(len(PROMPT))] + [range(t, t + 1) for t in range(len(PROMPT), T)]
    with torch.no_grad():  # the predictor sees each chunk as ours does, so its scores match bit for bit
        predicted = torch.cat([predictor(hidden[:, c]).float() for c in chunks], dim=1)  # (B, T)
        for c in chunks:
            policy.observe(tokens[:, c], hidden[:, c], torch.tensor(list(c)))
    official = [official_token_scores(tok, p, len(PROMPT), END_THINK)
                for tok, p in zip(tokens.tolist(), predicted.tolist())]
    return ranked(policy).tolist(), predicted.tolist(), official


def ranked(policy: dynts.Policy) -> torch.Tensor:
    """What Policy.select ranks the live slots by (B, L): the recorded scores, with the
    protected prompt at +inf (applied at selection, by `ranking`, where dynts.py has it)."""
    return policy.ranking(None)


def test_end_think_official_protects_it_ours_scores_it():
    rows = [[5, 6, END_THINK, 4, 4, 4], [5, END_THINK, 4, 4, 4, 4]]
    ours, predicted, official = dynts_scores(rows)
    for row, o, p, off in zip(rows, ours, predicted, official):
        e = len(PROMPT) + row.index(END_THINK)
        assert o[:len(PROMPT)] == [INF] * len(PROMPT)
        assert o[len(PROMPT):e] == p[len(PROMPT):e]  # thinking: the predictor's score
        assert o[e] == p[e] and math.isfinite(o[e])  # ours: </think> is scored like thinking
        assert off[e] == INF  # official: </think> itself is protected
        assert off[e + 1:] == [INF] * (len(o) - e - 1)  # official: the answer is protected
        assert o[e + 1:] == [dynts.ANSWER] * (len(o) - e - 1)  # ours: above every thinking token
        assert [j for j in range(len(o)) if o[j] != off[j]] == list(range(e, len(o)))


def test_padding_official_plus_inf_ours_minus_inf():
    rows = [[5, END_THINK, 4, EOT, EOT, EOT], [5, 6, END_THINK, 4, 4, EOT]]
    ours, predicted, official = dynts_scores(rows)
    for row, o, off in zip(rows, ours, official):
        end = len(PROMPT) + row.index(EOT)
        assert o[end] == dynts.ANSWER  # end-of-text itself is part of the answer
        assert o[end + 1:] == [-INF] * (len(o) - end - 1)  # ours: padding goes first
        assert off[end + 1:] == [INF] * (len(o) - end - 1)  # official: padding is protected
        e = len(PROMPT) + row.index(END_THINK)
        assert [j for j in range(len(o)) if o[j] != off[j]] == list(range(e, len(o)))  # </think> on


def linear_layers(module: nn.Module):
    return [(m.in_features, m.out_features, m.bias is not None) for m in module.modules() if isinstance(m, nn.Linear)]


def official_predictor_layers(C: int):
    """models/llama.py (regression head): fixed widths, no biases, whatever the hidden size C."""
    return [(C, 8192, False), (8192, 2048, False), (2048, 1, False)]


def test_predictor_architecture():
    for C in (8, 64, 3584, 4096):  # 3584: R1-Qwen-7B, 4096: R1-Llama-8B
        with torch.device("meta"):
            ours = dynts.ImportancePredictor(C)
        assert linear_layers(ours) == [(C, 2 * C, True), (2 * C, C // 2, True), (C // 2, 1, True)]
        assert [type(m) for m in ours.net if not isinstance(m, nn.Linear)] == [nn.Softplus] * 3  # same activations
        widths = [(i, o) for i, o, _ in official_predictor_layers(C)]
        assert ([(i, o) for i, o, _ in linear_layers(ours)] == widths) == (C == 4096)  # same widths only at 4096
        assert all(bias for *_, bias in linear_layers(ours))  # the official has none


def official_predictor_loss(pred, label, thinking, model: str):
    """verl_sft_fsdp.py: y = label x 1e4 (R1-Llama) or label^0.3 / 0.3 * 10 (R1-Qwen); MSE with
    weight 5 where y is in [4, 5); summed over the thinking tokens, over their count."""
    y = label * 1e4 if model == "llama" else label ** 0.3 / 0.3 * 10
    w = torch.where((y >= 4) & (y < 5), 5.0, 1.0)
    return (w * (pred - y) ** 2 * thinking).sum() / thinking.sum()


def ours_predictor_loss(pred, label):
    """dynts.predictor_loss: y = label x LABEL_SCALE, MSE between log(1 + pred) and log(1 + y)."""
    return dynts.predictor_loss(pred, label)


def test_predictor_loss_and_labels():
    from lab import train
    assert dynts.LABEL_SCALE == 1e4  # the official Llama transform; no per-model transform
    source = " ".join(inspect.getsource(dynts.predictor_loss).split())
    assert "F.mse_loss(torch.log1p(predicted), torch.log1p(LABEL_SCALE * labels))" in source  # log space, no weight
    source = " ".join(inspect.getsource(train.fit_predictor).split())
    assert "predictor_loss(predictor(X[idx]), Y[idx])" in source  # what training minimizes
    pred, label = torch.rand(50) * 10, torch.rand(50) * 1e-3
    assert ours_predictor_loss(pred, label) == F.mse_loss(torch.log1p(pred), torch.log1p(1e4 * label))

    # ours measures errors in ratios: twice too high costs the same on a small and a large label
    small, large = torch.tensor([1e-4]), torch.tensor([1e-2])  # y = 1 and y = 100
    double = lambda x: 2 * (1 + 1e4 * x) - 1  # (1 + pred) = 2 (1 + y)
    assert ours_predictor_loss(double(small), small) == pytest.approx(ours_predictor_loss(double(large), large).item())
    assert official_predictor_loss(double(large), large, torch.ones(1), "llama") > 1e3 * \
        official_predictor_loss(double(small), small, torch.ones(1), "llama")
    # the official band: the same error weighs 5x where the rescaled label is in [4, 5)
    in_band, below = torch.tensor([4.5e-4]), torch.tensor([3.5e-4])
    one = torch.ones(1)
    assert official_predictor_loss(1e4 * in_band + 1, in_band, one, "llama").item() == pytest.approx(
        5 * official_predictor_loss(1e4 * below + 1, below, one, "llama").item())
    qwen = official_predictor_loss(torch.zeros(1), torch.tensor([1e-4]), one, "qwen")
    assert qwen.item() == pytest.approx((1e-4 ** 0.3 / 0.3 * 10) ** 2)


def official_h2o_update(scores: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """h2o.py: `importance_score = F.pad(importance_score, (0, 1)) + cur_importance_score` is
    computed, then replaced on the next line by this step's attention."""
    accumulated = F.pad(scores, (0, 1)) + attn  # noqa: F841 (dead in the official code)
    return attn


def test_h2o_official_overwrites_ours_accumulates():
    steps = [torch.tensor([[0.9, 0.1, 0.0, 0.0]]),  # slot 0: heavy early on
             torch.tensor([[0.9, 0.0, 0.1, 0.0, 0.0]]),
             torch.tensor([[0.0, 0.3, 0.4, 0.1, 0.1, 0.1]])]  # the last step looks elsewhere
    ours = policies.H2O(budget=6, window=2, ratio=0.5)
    ours.reset(1, 6)
    ours.observe(torch.zeros(1, 3, dtype=torch.long), None, torch.arange(3), torch.zeros(1, 1, 1, 3))  # prefill
    theirs = torch.zeros(1, 3)
    for t, a in enumerate(steps, start=3):
        ours.observe(torch.zeros(1, 1, dtype=torch.long), None, torch.tensor([t]), a[None, :, None])  # one layer, one head
        theirs = official_h2o_update(theirs, a)
    assert torch.allclose(ours.scores, sum(F.pad(a, (0, 6 - a.shape[1])) for a in steps))
    assert torch.equal(theirs, steps[-1])
    # keep 2 of the 4 older slots: ours keeps the heavy hitter 0, the official drops it
    assert ours.select(ours.ranking(None)).tolist() == [[0, 2, 4, 5]]
    assert official_select(theirs, 2, 0.5).tolist() == [[1, 2, 4, 5]]


def official_snapkv_query_counts(prompt_len, budget, window, ratio, ob_window, n_steps):
    """snapkv.py: how many decode queries' attention is summed before each eviction. It starts
    summing at step `start_keep_step`, reset after each eviction to
    `decode_step + (budget - cache length - ob_window)`."""
    start = budget - prompt_len - ob_window
    cache, kv_length, summed, counts = prompt_len, 0, 0, []
    for step in range(n_steps):
        cache += 1
        summed = 1 if step == start else summed + (step > start)
        if kv_length >= budget:
            counts.append(summed)
            cache = window + official_count(cache, window, ratio)
            start = step + (budget - cache - ob_window)
        kv_length = cache
    return counts


def test_snapkv_official_no_pooling_33_queries_ours_pools_32():
    budget, window, ratio, P = 96, 8, 0.3, 10
    # pooling: a single spike spreads to the slots within kernel // 2 in ours, not in theirs
    ours = policies.SnapKV(budget, window, ratio)  # obs_window 32, kernel 7
    ours.reset(1, budget)
    ours.length = 64
    ours.scores[0, 20] = 1.0
    pooled = ours.eviction_scores(None)[0]
    assert pooled.nonzero().flatten().tolist() == list(range(17, 24))
    assert ours.scores[0, :64].nonzero().flatten().tolist() == [20]  # what the official ranks by

    # queries observed before each eviction: every attention row is all ones, so slot 0 sums their count
    ours = policies.SnapKV(budget, window, ratio)
    ours.reset(1, budget)
    ours.observe(torch.zeros(1, P, dtype=torch.long), None, torch.arange(P), torch.zeros(1, 1, 1, P))
    counts = []
    for t in range(P, P + 3 * budget):
        ours.observe(torch.zeros(1, 1, dtype=torch.long), None, torch.tensor([t]), torch.ones(1, 1, 1, ours.length + 1))
        if ours.should_evict(ours.length):
            counts.append(int(ours.scores[0, 0]))
            ours.keep_scores(ours.select(ours.ranking(None)))
    assert counts[:3] == [32, 32, 32]
    assert official_snapkv_query_counts(P, budget, window, ratio, 32, 3 * budget)[:3] == [33, 34, 34]


def official_rkv_redundancy(keys: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """rkv.py cal_similarity, for keys (n_layer, B, Hkv, L, D): cosine similarities with the
    diagonal zeroed; in each key's row, the newest other key more similar than the threshold
    is exempt (set to 0; slot 0 when there is none); the mean over rows, softmax over slots
    per layer and head, then the mean over layers and heads -> (B, L)."""
    k = keys / (keys.norm(dim=-1, keepdim=True) + 1e-8)
    sim = k @ k.transpose(-1, -2)  # (n_layer, B, Hkv, L, L)
    L = sim.shape[-1]
    sim = sim.masked_fill(torch.eye(L, dtype=torch.bool), 0.0)
    newest = torch.where(sim > threshold, torch.arange(L), 0).max(dim=-1).values  # (n_layer, B, Hkv, L)
    sim = sim.scatter(-1, newest[..., None], 0.0)
    return sim.mean(dim=-2).softmax(dim=-1).mean(dim=(0, 2))


def test_rkv_official_exempts_newest_duplicate_ours_mean_similarity():
    n_layer, Hkv, L, D = 2, 2, 12, 16
    keys = torch.eye(D)[:L].clone()  # orthogonal keys...
    keys[[5, 7]] = keys[3].clone()  # ...but slots 3, 5 and 7 hold the same key
    keys = keys.expand(n_layer, 1, Hkv, L, D)
    cache = types.SimpleNamespace(kv=torch.zeros(n_layer, 2, 1, Hkv, 64, D))
    cache.kv[:, 0, :, :, :L] = keys
    ours = policies.RKV(budget=64, window=4, ratio=0.3)
    ours.reset(1, 64)
    ours.length = L  # no attention observed: the score is -(1 - lam) * redundancy
    redundancy = -ours.eviction_scores(cache)[0] / (1 - ours.lam)
    theirs = official_rkv_redundancy(keys)[0]
    assert redundancy[3] == redundancy[5] == redundancy[7] > redundancy[0]  # ours: copies alike
    assert theirs[3] > theirs[5] > theirs[7]  # official: the newest copy is exempt...
    assert theirs[7] == pytest.approx(theirs[0].item())  # ...as redundant as a unique key
