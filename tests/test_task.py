"""Tests for task.py: determinism, split hygiene, answer checking, and where the decisive
information sits in the trace (far from the answer, never repeated near it)."""
import random
import re
import statistics

import pytest
from hypothesis import given, settings, strategies as st

import task
from task import END_THINK, EOT, THINK, Problem, check_answer, decisive_spans, make_problem, problems

N_RECENT = 300  # a recent window of this many tokens must hold none of the results


def links(prompt: str) -> dict[str, str]:
    """The table of a prompt, as a dict."""
    table = prompt.split("\n")[0].removeprefix("table: ")
    return dict(entry.split(">") for entry in table.split())


def test_same_seed_same_problems_other_seed_other_problems():
    assert problems("train", 20, seed=3) == problems("train", 20, seed=3)
    assert problems("eval", 20, seed=3) == problems("eval", 20, seed=3)
    assert problems("train", 20, seed=3) != problems("train", 20, seed=4)
    assert make_problem(random.Random(7)) == make_problem(random.Random(7))


def test_train_and_eval_never_share_a_prompt():
    train, evals = problems("train", 500), problems("eval", 500)
    assert all(task.split_of(p.prompt) == "train" for p in train)  # the proof: split is a
    assert all(task.split_of(p.prompt) == "eval" for p in evals)   # function of the prompt
    assert not {p.prompt for p in train} & {p.prompt for p in evals}
    with pytest.raises(ValueError):
        problems("test", 1)


def test_check_answer_accepts_the_reference_and_rejects_corruptions():
    p = problems("eval", 1, seed=1)[0]
    reference = p.thinking + END_THINK + p.answer + EOT
    assert check_answer(p, reference)
    assert check_answer(p, reference + "anything after the end of text")
    assert check_answer(p, p.thinking + END_THINK + p.answer)  # stopped at max length
    wrong_letter = p.answer[:-1] + ("a" if p.answer[-1] != "a" else "b")
    assert not check_answer(p, p.thinking + END_THINK + wrong_letter + EOT)
    assert not check_answer(p, p.thinking + END_THINK + p.answer.rsplit(" ", 1)[0] + EOT)
    assert not check_answer(p, p.thinking + END_THINK + " ".join(p.answer.split()[::-1]) + EOT)
    assert not check_answer(p, p.thinking + p.answer + EOT)  # never closed the thinking


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_results_are_written_once_far_before_the_answer(seed):
    p = make_problem(random.Random(seed))
    text, end_think = p.text(), len(p.prompt) + len(p.thinking)
    spans = decisive_spans(p)
    assert [text[a:b] for a, b in spans] == [f"{it[2:]}, so {it}." for it in p.answer.split()]
    assert all(len(p.prompt) <= a < b <= end_think for a, b in spans)
    for (a, b), item in zip(spans, p.answer.split()):
        value = item[2:]
        assert end_think - b >= N_RECENT                    # far from the answer ...
        assert value not in p.thinking[-N_RECENT:]          # ... and not repeated near it
        assert p.thinking.count(value) == 2                 # both inside the span, nowhere else
        assert text[a:b].count(value) == 2
        assert value not in p.prompt.split("\n")[1]         # not a start: needs the walk
        assert value not in links(p.prompt)                 # the walk ends there
    assert p.thinking.count("=") == len(spans)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_every_link_in_the_text_is_true_and_the_answer_follows_the_table(seed):
    p = make_problem(random.Random(seed))
    link = links(p.prompt)
    for a, b in re.findall(r"(?=([a-z]{2})>([a-z]{2}))", p.prompt + p.thinking):
        assert link[a] == b
    hops = int(re.search(r"(\d+) steps", p.prompt).group(1))
    for letter, start in re.findall(r"([A-Z]) ([a-z]{2})[,.]", p.prompt.split("\n")[1]):
        node = start
        for _ in range(hops):
            node = link[node]
        assert f"{letter}={node}" in p.answer.split()


def test_format_and_lengths():
    ps = problems("train", 200)
    thinking = [len(p.thinking) for p in ps]
    assert 600 <= min(thinking) and max(thinking) <= 1500
    assert 900 <= statistics.mean(thinking) <= 1200
    for p in ps:
        assert p.prompt.endswith(THINK) and p.prompt.count(THINK) == 1
        assert p.text().isascii()
        assert not any(m in p.thinking + p.answer for m in (THINK, END_THINK, EOT))
        assert p.text() == p.prompt + p.thinking + END_THINK + p.answer + EOT


def test_knobs_control_the_length():
    short = problems("train", 20, n_steps=2, checks=(1, 2), n_review=10)
    long = problems("train", 20, n_steps=8, checks=(10, 14))
    assert max(len(p.thinking) for p in short) < 700
    assert min(len(p.thinking) for p in long) > 3000
    assert all(len(p.answer.split()) == 8 for p in long)
    with pytest.raises(ValueError):
        make_problem(random.Random(0), hops=1)
