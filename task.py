"""The synthetic reasoning task: follow links through a table, think out loud, answer.

A problem, as the model reads it (byte-level: one character is one token):

    table: qe>hw ab>cd kl>mn cd>kl ...               <- prompt: a shuffled table of links
    follow each start 3 steps: A ab, B ef, C xy, D qr.
    <think>A: ab>cd>kl>mn, so A=mn.                  <- step A: 3 look-ups, result written ONCE
    check 1: try qe>hw>vu. dead end.                 <- filler: checks, dead ends, restating
    check 2: recheck ab>cd. fine.
    B: ef>...                                        <- steps B, C, D, each with its checks
    review 1: C starts at xy, 3 steps. right.        <- final review: names no result
    ...
    review 10: so far so good, moving on.
    </think>A=mn B=gh C=ij D=kl<|endoftext|>

Why it exercises DynTS (Guo et al., arXiv 2601.18383):
- Few thinking tokens decide the answer: the k result sentences ("mn, so A=mn.", 12 tokens
  each; `decisive_spans`) out of about a thousand thinking tokens. The answer copies the
  results from there, so it attends to them.
- They are far back: each result is written once, then hundreds of filler tokens follow that
  never contain it again; the final review alone is over 300 tokens (with the defaults), so
  a recent window of a few hundred tokens (Window, StreamingLLM) holds no result at all.
- They are only in the thinking: the prompt says where each walk starts, not where it ends.
  Recomputing a result from the (protected) prompt would take hops + 1 chained look-ups in a
  single forward pass, which a tiny model cannot do, so it has to copy from the trace. The
  predictor must therefore find the result tokens; keeping the prompt alone is not enough.
- It is learnable by a tiny model: every step is a copy or a look-up ("cd>" -> find "cd>" in
  the table, copy the next two letters), the kind of thing induction heads learn; no
  arithmetic. Every "x>y" anywhere in the text is a true link of the table, so the filler
  never teaches a wrong look-up, and its exact content never matters for the answer.
- A greedy decoder knows where it is from local context: filler comes in numbered
  sentences ("check 1", ..., "review 10"), so it can tell when a section ends.

Sizes. With the defaults the thinking is 700-1400 characters (tokens, mean ~1050) and the prompt 185.
For longer traces raise `checks` (filler sentences per step, ~38 characters each),
`n_steps` (one step is ~200 characters with the default checks) or `n_review`; for example
`n_steps=8, checks=(10, 14)` gives ~4000 characters of thinking.
"""
import hashlib
import random
from dataclasses import dataclass
from string import ascii_lowercase, ascii_uppercase

THINK, END_THINK, EOT = "<think>", "</think>", "<|endoftext|>"  # special tokens 257, 258, 256
SPLITS = ("train", "eval")

# Every fixed piece of text. Nodes are two lowercase letters that never occur inside these
# words, so a node's name in the text always means that node (and tests can search for it).
MUSINGS = ("hmm, let me look at the table again.", "wait, is that consistent? yes.",
           "so far so good, moving on.", "nothing else to try here.")
TEMPLATES = ("table: follow each start steps: so check try dead end recheck fine "
             "starts at right review " + " ".join(MUSINGS))
NODES = [a + b for a in ascii_lowercase for b in ascii_lowercase if a + b not in TEMPLATES]


@dataclass
class Problem:
    prompt: str    # the question, ending with "<think>"
    thinking: str  # the trace between <think> and </think>, without the markers
    answer: str    # the text after "</think>", without <|endoftext|>

    def text(self) -> str:
        """The full training text: prompt, thinking, answer, end of text."""
        return self.prompt + self.thinking + END_THINK + self.answer + EOT


def _dead_end(rng: random.Random, link: dict[str, str], distractors: list[str]) -> str:
    """A walk of 1 or 2 true links among the distractor nodes, which lead nowhere useful."""
    walk = [rng.choice(distractors)]
    for _ in range(rng.randint(1, 2)):
        walk.append(link[walk[-1]])
    return f"try {'>'.join(walk)}. dead end."


def make_problem(rng: random.Random, n_steps: int = 4, hops: int = 3, n_distractors: int = 8,
                 checks: tuple[int, int] = (2, 6), n_review: int = 10) -> Problem:
    """Draw one problem.

    n_steps:       walks to follow (A, B, ...); the answer lists one result per walk
    hops:          links per walk; >= 2, so the answer is never one look-up from the prompt
    n_distractors: extra table entries, among themselves: the material of the dead ends
    checks:        (min, max) filler sentences after each step, drawn uniformly
    n_review:      filler sentences after the last step; they put the last result
                   at least 31 * n_review characters before </think>
    """
    if not (1 <= n_steps <= 26 and hops >= 2 and n_distractors >= 2 and 0 <= checks[0] <= checks[1]):
        raise ValueError("need 1 <= n_steps <= 26, hops >= 2, n_distractors >= 2, checks = (lo, hi)")
    nodes = rng.sample(NODES, n_steps * (hops + 1) + n_distractors)
    walks = [nodes[i * (hops + 1):(i + 1) * (hops + 1)] for i in range(n_steps)]
    distractors = nodes[n_steps * (hops + 1):]
    link = {w[i]: w[i + 1] for w in walks for i in range(hops)}  # a result has no outgoing link
    for d in distractors:
        link[d] = rng.choice([e for e in distractors if e != d])
    letters = ascii_uppercase[:n_steps]

    table = [f"{a}>{b}" for a, b in link.items()]
    rng.shuffle(table)
    starts = ", ".join(f"{x} {w[0]}" for x, w in zip(letters, walks))
    prompt = f"table: {' '.join(table)}\nfollow each start {hops} steps: {starts}.\n{THINK}"

    def filler(label: str, letter: str | None = None, walk: list[str] | None = None) -> str:
        """One numbered filler sentence about the current step (or, without one, about any
        step). It may name any node but a result, and says nothing the answer needs."""
        kind = rng.randrange(4 if walk else 3)
        if kind == 0:
            body = rng.choice(MUSINGS)
        elif kind == 1:
            body = _dead_end(rng, link, distractors)
        elif kind == 2:
            x, w = (letter, walk) if walk else rng.choice(list(zip(letters, walks)))
            body = f"{x} starts at {w[0]}, {hops} steps. right."
        else:  # a link of the current walk that does not end at its result
            i = rng.randrange(hops - 1)
            body = f"recheck {walk[i]}>{walk[i + 1]}. fine."
        return f"{label}: {body}\n"

    thinking = ""
    for letter, walk in zip(letters, walks):
        thinking += f"{letter}: {'>'.join(walk)}, so {letter}={walk[-1]}.\n"
        for i in range(rng.randint(*checks)):
            thinking += filler(f"check {i + 1}", letter, walk)
    for i in range(n_review):
        thinking += filler(f"review {i + 1}")
    answer = " ".join(f"{x}={w[-1]}" for x, w in zip(letters, walks))
    return Problem(prompt, thinking, answer)


def split_of(prompt: str) -> str:
    """The split a prompt belongs to: the parity of its SHA-256. A pure function of the prompt,
    so no prompt can be in both splits, whatever the seeds."""
    return SPLITS[hashlib.sha256(prompt.encode()).digest()[0] % 2]


def problems(split: str, n: int, seed: int = 0, **knobs) -> list[Problem]:
    """n problems of one split, the same ones for the same arguments.

    Each split draws from its own seed stream, and keeps only the prompts that `split_of`
    assigns to it (about half), so train and eval never share a prompt.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"dynts-task/{split}/{seed}")  # str seeds are hashed with SHA-512: stable
    out: list[Problem] = []
    while len(out) < n:
        problem = make_problem(rng, **knobs)
        if split_of(problem.prompt) == split:
            out.append(problem)
    return out


def check_answer(problem: Problem, generated: str) -> bool:
    """Exact match of the answer. `generated` is what the model wrote after the prompt:
    thinking, "</think>", answer, and maybe "<|endoftext|>" (anything after it is ignored).
    Only the text between the first "</think>" and the end of text counts, spaces trimmed."""
    if END_THINK not in generated:
        return False
    answer = generated.split(END_THINK, 1)[1].split(EOT, 1)[0]
    return answer.strip() == problem.answer


def decisive_spans(problem: Problem) -> list[tuple[int, int]]:
    """[start, end) character spans, in problem.text(), of the tokens that decide the answer:
    each step's result sentence, from the walk's last node to the period ("mn, so A=mn."),
    one span per step, in step order. The answer copies the result from there (a trained
    model's answer attends most to the two "mn"s), so a good KV policy must keep them."""
    spans = []
    for item in problem.answer.split():  # "A=mn"
        end = problem.thinking.index(item) + len(item) + 1      # just after "A=mn."
        start = end - len(f"{item[2:]}, so {item}.")            # at "mn, so A=mn."
        spans.append((len(problem.prompt) + start, len(problem.prompt) + end))
    return spans
