"""A refactor keeps every policy's tokens: the positions each eviction keeps, and what
`python generate.py --dynts` prints, against records made with the shipped checkpoint
(tests/fixtures/make_kept_record.py)."""

import io
import json
import os
import re

import pytest

pytest.importorskip("torch")
import generate  # noqa: E402
from lab import task
from lab.checkpoint import DEFAULT_CKPT, load_checkpoint
from lab.policies import make_policy
from model import get_encoding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = json.load(open(os.path.join(ROOT, "tests", "fixtures", "kept-record.json")))


@pytest.fixture(scope="module")
def shipped():
    model, predictor, meta = load_checkpoint(DEFAULT_CKPT)
    enc = get_encoding(meta["encoding"])
    problems = task.problems("eval", max(RECORD["problems"]) + 1, **meta["task"])
    prompts = [enc.encode(problems[i].prompt, allowed_special="all") for i in RECORD["problems"]]
    return model.eval(), predictor.eval(), enc, prompts


@pytest.mark.parametrize("name", sorted(RECORD["policies"]))
def test_every_policy_keeps_the_recorded_positions(name, shipped):
    model, predictor, enc, prompts = shipped
    policy = make_policy(name, RECORD["budget"], RECORD["window"], RECORD["ratio"], len(prompts[0]), predictor, enc)
    kept = []
    on_step = lambda cache, eviction: eviction is not None and kept.append(cache.pos[:, :cache.length].tolist())
    tokens, _ = generate.generate(model, prompts, policy, RECORD["new_tokens"], eot_id=enc.eot_token,
                                  vocab_limit=enc.n_vocab, on_step=on_step)
    want = RECORD["policies"][name]
    assert len(kept) == len(want["kept"])
    for i, (got, expected) in enumerate(zip(kept, want["kept"])):
        assert got == expected, f"eviction {i} of {name} kept other positions"
    assert tokens.tolist() == want["tokens"]


def test_generate_dynts_prints_what_it_printed_when_recorded():
    out = io.StringIO()
    generate.main(policy="dynts", out=out)
    speedless = re.sub(r" \| [0-9.]+ tokens/s on ", " | <speed> on ", out.getvalue())
    assert speedless == open(os.path.join(ROOT, "tests", "fixtures", "generate-dynts.txt")).read()
