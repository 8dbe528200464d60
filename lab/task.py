"""The synthetic reasoning task: follow links through a table, think out loud, answer.

A problem, as the model reads it (byte-level: one character is one token):

    table: qe>hw ab>cd kl>mn cd>kl ...               <- prompt: a shuffled table of links
    follow 2 steps, answer ends: A ab, B ef, C xy.
    <think>A: ab>cd>kl, so A=kl.                     <- a walk: 2 look-ups, then its result
    check 1: try qe>hw. dead end.                    <- filler: checks, dead ends, musings
    ...
    B: ef>gh>ij, so B=ij.
    check 1: ...
    review 1: B starts at ef, 2 steps. right.        <- the final review: ~500 tokens
    ...
    </think>A=kl B=ij C=op<|endoftext|>

Five families (Guo et al., arXiv 2601.18383, compare KV policies on real reasoning traces,
where the answer's sources are of every kind; here each family isolates one kind, so that
each heuristic has a family it should win):
- far:       each result is written once and never read again before the answer, which
             sits 500+ tokens later. Only a selector that predicts the answer's needs keeps
             them: attention, recency and separators give no signal.
- local:     the trace restates the results so far every few sentences ("so far A=kl B=ij."),
             the last time right before `</think>`: a recent window suffices (Window wins).
- reused:    every other check reads a result so far again ("A ends at kl, no link out."),
             so the result tokens receive attention all along the trace (H2O, SnapKV), but
             the final review names none of them.
- redundant: the filler is two sentences repeated verbatim; each result is restated once,
             among its step's checks. Keys of repeated sentences are near-duplicates, which R-KV's
             redundancy term evicts first, so the rare result tokens survive.
- prompt:    the results are restated as in `local`, but the answer needs the table to the
             end: each item is the result and one more look-up ("A=kl>mn"), announced by the
             prompt ("answer next"), by every restatement ("so far A=kl B=ij, then next.") and
             by the trace's last sentence. A policy that evicts the prompt fails.

The paper's regime (`paper_regime=True`): a short question (the table and "mode 3, review 24: kr
yd rr."), a long trace, and two families in which result statements in exactly the template
("so D=gh.") are not all needed, so that knowing where the task writes its results is not enough:
- decoy:     after the first step, three side walks the question does not ask about ("D: ab>cd,
             so D=cd."), and every other filler sentence restates the side results ("so far D=cd
             E=gh F=ij."), up to the end. The asked results are written once.
- mixed:     dependencies of several kinds in one trace: A's result written once, B's read again
             ("B ends at ij, no link out."), C's first written a step short ("so C=em.") and
             corrected later ("wait, C takes 2 steps: rr>em>vs, so C=vs."), and two side walks
             restated as in decoy.
In this regime the prompt announces the review's length ("mode 3, review 24: kr yd rr."), drawn
around the recent window's; the last step has no checks, so its result sits that many sentences
before the answer: inside the window on some problems, beyond it on others. Every count in a
trace is fixed by the prompt (a model decoding greedily cannot draw a length it was not told).

Every prompt has the same number of tokens, whatever its family (the same number of table
entries and walks, "answer ends" or "answer next"), so problems batch without padding.

The family weights are fixed here, before any policy was evaluated (FAMILY_WEIGHTS, equal).
Train, validation and evaluation problems never share a prompt (`split_of`, a hash).

Sizes. With the defaults the prompt is 121 tokens and a whole problem 2,400-3,500 (about
2,900 on average; `n_filler` sentences of ~36 characters). The answer has 3 items.
"""
import hashlib
import random
from dataclasses import dataclass
from string import ascii_lowercase, ascii_uppercase

THINK, END_THINK, EOT = "<think>", "</think>", "<|endoftext|>"  # special tokens 257, 258, 256
SPLITS = ("train", "valid", "eval")
FAMILIES = ("far", "local", "reused", "redundant", "prompt", "decoy", "mixed")
SHORT_TRACE_FAMILIES = FAMILIES[:5]  # the earlier short-trace task's; the paper's regime (shipped) adds two
FAMILY_WEIGHTS = dict(far=1, local=1, reused=1, redundant=1, prompt=1, decoy=1, mixed=1)  # fixed before any evaluation
# In the paper's regime, each family's checks per step are scaled by this, so that every family's
# trace has about the same number of tokens (measured on 300 training problems a family).
FILLER_SCALE = dict(far=0.981, local=1.088, reused=0.973, redundant=1.037, prompt=0.973, decoy=1.033, mixed=1.106)
MODES = {family: i + 1 for i, family in enumerate(FAMILIES)}  # with announce=True the prompt says "mode 3"

# Every fixed piece of text. Nodes are two lowercase letters that never occur inside these
# words, so a node's name in the text always means that node (and tests can search for it).
MUSINGS = ("hmm, let me look at the table again.", "wait, is that consistent? yes.",
           "so far so good, moving on.", "nothing else to try here.")
LAST_STEP = "then one more step each."
NEXT = ", then next."  # how the prompt family's restatements end: the trace itself says which family it is
TEMPLATES = ("table: follow each start steps: so check try dead end recheck fine starts at right "
             "review ends no link out far answer next " + LAST_STEP + NEXT + " " + " ".join(MUSINGS))
NODES = [a + b for a in ascii_lowercase for b in ascii_lowercase if a + b not in TEMPLATES]


@dataclass
class Problem:
    prompt: str    # the question, ending with "<think>"
    thinking: str  # the trace between <think> and </think>, without the markers
    answer: str    # the text after "</think>", without <|endoftext|>: items "A=kl" separated by spaces
    family: str = "far"

    def text(self) -> str:
        """The full training text: prompt, thinking, answer, end of text."""
        return self.prompt + self.thinking + END_THINK + self.answer + EOT


def families_of(knobs: dict) -> tuple[str, ...]:
    """The families of a task's settings: the paper's regime has all seven, the short trace five."""
    return FAMILIES if knobs.get("paper_regime") else SHORT_TRACE_FAMILIES


def make_problem(rng: random.Random, family: str = "far", n_items: tuple[int, int] = (3, 3), hops: int = 2,
                 n_distractors: int = 2, n_filler: tuple[int, int] = (70, 84), n_review: int | tuple[int, int] = 16,
                 announce: bool = False, walks_first: bool = False, paper_regime: bool = False) -> Problem:
    """Draw one problem of one family.

    n_items:       (min, max) walks to follow (A, B, ...); the answer has one item per walk
    hops:          links per walk; >= 2, so a result is never one look-up from the prompt
    n_distractors: extra table entries, among themselves: the material of the dead ends (the
                   families other than `prompt` get k more, so every table has as many links)
    n_filler:      (min, max) filler sentences in all (checks after the steps + the review)
    n_review:      filler sentences after the last step, the final review; (lo, hi): drawn
    announce:      the prompt names the family ("mode 3"), so that a model can tell which kind of
                   trace to write; without it only the prompt family's "answer next" shows
    walks_first:   every walk first, then all the checks: the table is needed only at the start
                   (and, in the prompt family, for the answer), so that a policy that drops the
                   prompt can still follow the trace
    paper_regime:  the paper's proportions: a short question (the table and "mode 3, review 24:
                   kr yd rr.", the review's length announced) before a long trace, n_filler
                   checks for each step but the last, and the two families whose result
                   statements the answer does not all need (decoy, mixed)
    The shipped checkpoint was trained with announce on, the others off (docs/RESULTS.md).
    """
    if family not in families_of(dict(paper_regime=paper_regime)):
        raise ValueError(f"family must be one of {families_of(dict(paper_regime=paper_regime))}, got {family!r}")
    lo, hi = n_items
    n_review = n_review if isinstance(n_review, int) else rng.randint(*n_review)
    n_side = dict(decoy=3, mixed=2).get(family, 0)  # side walks: results the question does not ask for
    if not (1 <= lo <= hi <= 26 - n_side and hops >= 2 and n_distractors >= 2 and 0 <= n_filler[0] <= n_filler[1]
            and (1 if paper_regime else 0) <= n_review):
        raise ValueError("need 1 <= n_items <= 26, hops >= 2, n_distractors >= 2, n_filler = (lo, hi), n_review >= 0")
    k = rng.randint(lo, hi)
    extra = 1 if family == "prompt" else 0  # the prompt family's results link on once more
    n_distractors += k * (1 - extra)  # as many links as the prompt family's table
    nodes = rng.sample(NODES, k * (hops + 1 + extra) + n_distractors)
    walks = [nodes[i * (hops + 1 + extra):(i + 1) * (hops + 1 + extra)] for i in range(k)]
    distractors = nodes[k * (hops + 1 + extra):]
    link = {w[i]: w[i + 1] for w in walks for i in range(hops + extra)}
    for d in distractors:
        link[d] = rng.choice([e for e in distractors if e != d])
    letters = ascii_uppercase[:k]
    results = [w[hops] for w in walks]

    table = [f"{a}>{b}" for a, b in link.items()]
    rng.shuffle(table)
    starts = ", ".join(f"{x} {w[0]}" for x, w in zip(letters, walks))
    task_line = f"follow {hops} steps, " + (f"mode {MODES[family]}, " if announce else "") + \
        "answer " + ("next" if family == "prompt" else "ends")
    prompt = f"table: {' '.join(table)}\n{task_line}: {starts}.\n{THINK}"
    if paper_regime:  # the short question: the mode says what to do, the review how long; the starts in order
        if not n_review < 100:
            raise ValueError(f"the paper regime announces the review in two digits: n_review < 100, got {n_review}")
        prompt = f"{' '.join(table)}\nmode {MODES[family]}, review {n_review:02d}: {' '.join(w[0] for w in walks)}.\n{THINK}"
    side_letters = ascii_uppercase[k:k + n_side]
    side = [(x, d, link[d]) for x, d in zip(side_letters, rng.sample(distractors, n_side))]  # one look-up each

    def dead_end() -> str:  # 1 or 2 true links among the distractors, which lead nowhere useful
        walk = [rng.choice(distractors)]
        for _ in range(rng.randint(1, 2)):
            walk.append(link[walk[-1]])
        return f"try {'>'.join(walk)}. dead end."

    def varied(done: int) -> str:  # one varied filler sentence; it may name any node but a result
        kind = rng.randrange(4 if done else 3)
        if kind == 0:
            return rng.choice(MUSINGS)
        if kind == 1:
            return dead_end()
        if kind == 2:
            i = rng.randrange(k)
            return f"{letters[i]} starts at {walks[i][0]}, {hops} steps. right."
        i = rng.randrange(done)  # a link of a walk done so far that does not end at its result
        j = rng.randrange(hops - 1)
        return f"recheck {walks[i][j]}>{walks[i][j + 1]}. fine."

    so_far = lambda done: "so far " + " ".join(f"{x}={r}" for x, r in zip(letters[:done], results[:done])) + \
        (NEXT if family == "prompt" else ".")
    side_so_far = "so far " + " ".join(f"{x}={r}" for x, _, r in side) + "."  # the side results
    reread = lambda i: f"{letters[i]} ends at {results[i]}, no link out."
    # the redundant family's two filler sentences (in the paper regime, of about the same length every time)
    repeated = [rng.choice(MUSINGS[2:] if paper_regime else MUSINGS), dead_end()]

    n = rng.randint(*n_filler)
    checks = [max(0, n - n_review) // k + (i < max(0, n - n_review) % k) for i in range(k)]  # per step
    if paper_regime:  # n checks per step but the last, whose result only the review follows
        n = round(n * FILLER_SCALE[family])  # (each family's sentences have their own mean length)
        checks = [n] * (k - 1) + [0]
    corrected = family == "mixed" and k >= 3  # mixed: the third walk is first stopped a step short
    correct_at = sum(checks) + n_review // 2 if corrected else None  # ... and corrected halfway through the review
    if walks_first:  # the redundant family restates each result once: index -> which result
        restate_at = dict(zip(sorted(rng.sample(range(sum(checks)), min(k, sum(checks)))), range(k)))
    elif paper_regime:  # halfway through its step's checks (the last step's: the review's first line)
        restate_at = {sum(checks[:i]) + checks[i] // 2: i for i in range(k)}
    else:
        restate_at = {sum(checks[:i]) + rng.randrange(checks[i]): i for i in range(k) if checks[i]}

    def filler(done: int, index: int, last: bool) -> str:
        """The index-th filler sentence of the trace, after `done` steps, by family."""
        if index == correct_at:
            w = walks[2]
            return f"wait, C takes {hops} steps: {'>'.join(w[:hops + 1])}, so C={w[hops]}."
        if family in ("decoy", "mixed") and index % 2 == 1:  # the side results, restated again and again
            return side_so_far
        if family == "mixed" and done >= 2 and index % 4 == 0 and not reviewing:
            return reread(1)  # B's result, read again (A's is written once, C's corrected)
        if family in ("local", "prompt"):
            return so_far(done) if index % 3 == 2 or last else varied(done)
        if family == "reused" and index % 2 == 0 and not reviewing:
            every = (index // 4) % done if walks_first else done - 1  # every result, in turn
            return reread(every if index % 4 == 0 else rng.randrange(done))  # a result so far, read again
        if family == "redundant":
            if index in restate_at:
                return reread(restate_at[index])  # a result, restated once
            return repeated[index % 2]
        return varied(done)

    walk_lines = [f"{x}: {'>'.join(w[:hops + 1])}, so {x}={w[hops]}.\n" for x, w in zip(letters, walks)]
    if corrected:  # one step short: a result in the template that the answer must not use
        walk_lines[2] = f"C: {'>'.join(walks[2][:hops])}, so C={walks[2][hops - 1]}.\n"
    walk_lines[0] += "".join(f"{x}: {d}>{r}, so {x}={r}.\n" for x, d, r in side)  # the side walks, after A's
    if walks_first:  # (steps done, their walks, then this many checks)
        blocks = [(k, "".join(walk_lines), sum(checks))]
    else:
        blocks = [(i + 1, walk_lines[i], checks[i]) for i in range(k)]
    thinking, index, reviewing = "", 0, False
    for done, lines, n_checks in blocks:
        thinking += lines
        for c in range(n_checks):
            thinking += f"check {c + 1}: {filler(done, index, False)}\n"
            index += 1
    reviewing = True
    for r in range(n_review):
        thinking += f"review {r + 1}: {filler(k, index, r == n_review - 1)}\n"
        index += 1
    if family == "prompt":
        thinking += LAST_STEP + "\n"
        answer = " ".join(f"{x}={r}>{link[r]}" for x, r in zip(letters, results))
    else:
        answer = " ".join(f"{x}={r}" for x, r in zip(letters, results))
    return Problem(prompt, thinking, answer, family)


def split_of(prompt: str) -> str:
    """The split a prompt belongs to, from its SHA-256: half train, a quarter each valid and
    eval. A pure function of the prompt, so no prompt is in two splits, whatever the seeds."""
    return ("train", "train", "valid", "eval")[hashlib.sha256(prompt.encode()).digest()[0] % 4]


def problems(split: str, n: int, seed: int = 0, family: str | None = None, **knobs) -> list[Problem]:
    """n problems of one split, the same ones for the same arguments: of one family, or
    (family=None) each of a family drawn by FAMILY_WEIGHTS.

    Each split and family draws from its own seed stream, and keeps only the prompts that
    `split_of` assigns to it, so no two splits share a prompt.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"dynts-task/{split}/{family}/{seed}")  # str seeds are hashed with SHA-512: stable
    names = families_of(knobs)
    weights = [FAMILY_WEIGHTS[f] for f in names]
    out: list[Problem] = []
    while len(out) < n:
        problem = make_problem(rng, family or rng.choices(names, weights)[0], **knobs)
        if split_of(problem.prompt) == split:
            out.append(problem)
    return out


def answer_of(generated: str) -> str | None:
    """The answer in what the model wrote after the prompt (thinking, "</think>", answer, maybe
    "<|endoftext|>" and anything after it): the text between the first "</think>" and the end
    of text, spaces trimmed; None if the thinking never closed."""
    if END_THINK not in generated:
        return None
    return generated.split(END_THINK, 1)[1].split(EOT, 1)[0].strip()


def check_answer(problem: Problem, generated: str) -> bool:
    """Exact match of the whole answer (Pass@1 under greedy decoding)."""
    return answer_of(generated) == problem.answer


def item_accuracy(problem: Problem, generated: str) -> float:
    """The fraction of the answer's items ("A=kl") written right, each in its own place."""
    expected, got = problem.answer.split(), (answer_of(generated) or "").split()
    return sum(e == g for e, g in zip(expected, got)) / len(expected)


def result_statement(letter: str, value: str) -> str:
    """How a trace writes a step's result: "kl, so A=kl." (the walk's last node, then the result)."""
    return f"{value}, so {letter}={value}."


def decisive_spans(problem: Problem) -> list[tuple[int, int]]:
    """[start, end) character spans, in problem.text(), of each step's result sentence, from
    the walk's last node to the period ("kl, so A=kl."), one per step, in step order. The
    first place each result is written: in the `far` family the only one."""
    spans = []
    for item in problem.answer.split():  # "A=kl" (or "A=kl>mn")
        letter, value = item[0], item[2:4]
        end = problem.thinking.index(f"so {letter}={value}.") + len(f"so {letter}={value}.")
        start = end - len(result_statement(letter, value))
        spans.append((len(problem.prompt) + start, len(problem.prompt) + end))
    return spans
