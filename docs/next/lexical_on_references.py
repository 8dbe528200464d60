"""What a policy that reads only the text can keep, family by family, on the reference traces.

Each validation problem's reference trace (the task's own text: no model, no sampling) is fed a
token at a time through generate.generate's loop, under the checkpoint's 30% budget, window and
ratio; when `</think>` is written, we ask whether the value of each asked result's first result
statement ("kl, so A=kl.") is still cached. Policies whose scores need no model (the lexical
control, the window, StreamingLLM, SepLLM, all with the prompt protected) are simulated exactly
so: this shows by construction how each family defeats them, before any model decodes.

    python docs/next/lexical_on_references.py [CKPT] [N]      (N validation problems a family)
"""
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import generate  # noqa: E402
from lab import task  # noqa: E402
from lab.checkpoint import DEFAULT_CKPT, load_checkpoint  # noqa: E402
from lab.policies import make_policy  # noqa: E402
from model import END_THINK, GPTConfig, get_encoding  # noqa: E402

POLICIES = ("lexical", "window+p", "streaming+p", "sepllm+p")


class Teacher(torch.nn.Module):
    """Stands in for the model: caches nothing worth reading, and its logits always name the
    reference trace's next token, so that the loop writes the reference trace exactly."""

    def __init__(self, reference: torch.Tensor, eot_id: int, vocab: int):
        super().__init__()
        self.config = GPTConfig(block_size=reference.shape[1] + 1, vocab_size=vocab, n_layer=1, n_head=1,
                                n_kv_head=1, n_embd=16)
        self.wte = torch.nn.Embedding(1, 1)  # generate reads the device and dtype here
        self.reference, self.eot_id, self.vocab = reference, eot_id, vocab

    def forward(self, tokens, cache, need_attention=False):
        cache.advance(tokens.shape[1])
        nxt = self.reference[:, cache.seen] if cache.seen < self.reference.shape[1] else \
            torch.full((tokens.shape[0],), self.eot_id)
        return torch.nn.functional.one_hot(nxt, self.vocab).float(), None, None


def value_positions(enc, problem) -> list[int]:
    """The token positions of each asked result's value in its first result statement."""
    text = problem.text()
    out = []
    for item in problem.answer.split():
        letter, value = item[0], item[2:4]
        end = text.index(task.result_statement(letter, value)) + len(task.result_statement(letter, value))
        for c in (end - 3, end - 2):  # the value's two characters, before the period
            out.append(len(enc.encode(text[:c], allowed_special="all")))
    return out


def run(policy_name, problems, enc, decoding):
    ids = [enc.encode(p.text(), allowed_special="all") for p in problems]
    P = len(enc.encode(problems[0].prompt, allowed_special="all"))
    longest = max(map(len, ids))
    reference = torch.tensor([row + [enc.eot_token] * (longest - len(row)) for row in ids])
    end_think = enc.encode_single_token(END_THINK)
    policy = make_policy(policy_name, decoding["budget"], decoding["window"], decoding["ratio"], P, None, enc)
    teacher = Teacher(reference, enc.eot_token, enc.n_vocab)
    cached = [None] * len(problems)

    def on_step(cache, eviction):
        just = cache.seen - 1  # the position of the token this step read
        for b in range(len(problems)):
            if cached[b] is None and just < reference.shape[1] and reference[b, just] == end_think:
                cached[b] = set(cache.pos[b, :cache.length].tolist())

    generate.generate(teacher, reference[:, :P], policy, longest - P + 1, eot_id=enc.eot_token, on_step=on_step)
    needed = [value_positions(enc, p) for p in problems]
    kept = [sum(all(q in cached[b] for q in needed[b][2 * i:2 * i + 2]) for i in range(3)) for b in range(len(problems))]
    return sum(k == 3 for k in kept) / len(kept), sum(kept) / len(kept)


def main(ckpt=DEFAULT_CKPT, n=50):
    meta = load_checkpoint(ckpt)[2]
    enc = get_encoding(meta["encoding"])
    d = meta["decoding"]
    print(f"{ckpt}: budget {d['budget']}, window {d['window']}, ratio {d['ratio']}; {n} validation problems a family;"
          f" reference traces, no model. Cell: problems with all three asked values cached at </think> (%),"
          f" and the mean count of three")
    print("| family | " + " | ".join(POLICIES) + " |")
    print("|---" * (len(POLICIES) + 1) + "|")
    t0 = time.time()
    for family in task.FAMILIES:
        problems = task.problems("valid", n, family=family, **meta["task"])
        cells = [run(name, problems, enc, d) for name in POLICIES]
        print(f"| {family} | " + " | ".join(f"{100 * a:.0f} ({m:.2f})" for a, m in cells) + " |", flush=True)
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main(*(sys.argv[1:2] or [DEFAULT_CKPT]), *[int(a) for a in sys.argv[2:3]])
