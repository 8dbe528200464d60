"""lab/view.py: the page, the raster and the terminal view agree with what the generation did."""

import io
import re
from html.parser import HTMLParser

import pytest
import torch

import generate
from lab import view
from lab.cli import UsageError
from lab.policies import make_policy
from model import GPT, PRESETS, KVCache


class Spans(HTMLParser):
    """The token spans of a page: (data-pos, classes) in order, per sample section."""

    def __init__(self):
        super().__init__()
        self.sections = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "h2":
            self.sections.append([])
        if tag == "span" and "data-pos" in a:
            self.sections[-1].append((int(a["data-pos"]), set(a["class"].split())))


def run_with_keep_spy(monkeypatch, tmp_path, **kwargs):
    """generate.main on a random tiny model, recording each compaction's positions before and
    after, independently of view.TraceLog."""
    evicted = set()
    real_keep = KVCache.keep

    def keep(cache, idx, chunk=32):
        before = cache.pos[:, :cache.length].clone()
        real_keep(cache, idx, chunk)
        for b in range(before.shape[0]):
            evicted.update((b, p) for p in set(before[b].tolist()) - set(cache.pos[b, :cache.length].tolist()))

    monkeypatch.setattr(KVCache, "keep", keep)
    page = str(tmp_path / "trace.html")
    out = kwargs.pop("out", io.StringIO())
    stats = generate.main(init="random", preset="tiny", device="cpu", prompt="Question: which tokens stay? <think>",
                          max_new_tokens=150, temperature=1.0, html_path=page, out=out, **kwargs)
    return stats, open(page).read(), evicted, out


@pytest.mark.parametrize("policy", ["dynts", "h2o+p", "window"])
def test_the_page_has_one_span_per_token_and_greys_exactly_the_evicted(policy, monkeypatch, tmp_path):
    stats, page, evicted, _ = run_with_keep_spy(monkeypatch, tmp_path, policy=policy, budget=60, window=10,
                                                num_samples=2)
    parser = Spans()
    parser.feed(page)
    assert len(parser.sections) == 2 and stats["evictions"] > 0
    for b, spans in enumerate(parser.sections):
        assert [p for p, _ in spans] == list(range(len(spans)))  # one element per token, in order
        greyed = {(b, p) for p, classes in spans if "e" in classes}
        assert greyed == {(r, p) for r, p in evicted if r == b and p < len(spans)}
        if policy != "window":  # the protected prompt is outlined
            assert all("p" in classes for p, classes in spans[:stats["prompt_tokens"]])


def test_the_raster_has_as_many_live_pixels_per_step_as_the_cache_holds():
    model = GPT(PRESETS["tiny"]).eval()
    policy = make_policy("window", 40, 8, 0.3, 20)
    log = view.TraceLog(policy)
    lengths = []  # after each forward, before its eviction: the slots the cache held

    def on_step(cache, eviction):
        log.on_step(cache, eviction)
        lengths.append(cache.length if eviction is None else eviction[1].shape[1])

    tokens, stats = generate.generate(model, list(range(20)), policy, 120, num_samples=2, temperature=1.0,
                                      generator=torch.Generator().manual_seed(0), on_step=on_step)
    log.finish()
    assert stats["evictions"] >= 3 and max(lengths) == 40
    for row in range(2):
        live = log.live(row, 20 + tokens.shape[1])  # (steps, positions)
        assert live.sum(dim=1).tolist() == lengths


def test_the_raster_png_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    model = GPT(PRESETS["tiny"]).eval()
    policy = make_policy("window", 40, 8, 0.3, 20)
    log = view.TraceLog(policy)
    generate.generate(model, list(range(20)), policy, 60, on_step=log.on_step)
    log.finish()
    view.raster({"window": log}, 80, str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_a_terminal_gets_the_evicted_tokens_dimmed_and_a_pipe_plain_text(monkeypatch, tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    _, _, _, tty = run_with_keep_spy(monkeypatch, tmp_path, policy="dynts", budget=60, window=10, out=Terminal())
    _, _, _, pipe = run_with_keep_spy(monkeypatch, tmp_path, policy="dynts", budget=60, window=10)
    assert "\x1b[2m" in tty.getvalue()
    assert "\x1b[" not in pipe.getvalue()


def test_bad_output_paths_fail_before_decoding(tmp_path):
    for flag, kwargs in [("--html", dict(html_path=str(tmp_path / "no" / "such" / "dir.html"))),
                         ("--html", dict(html_path=str(tmp_path))),
                         ("--plot", dict(plot_path=str(tmp_path / "missing" / "r.png")))]:
        with pytest.raises(UsageError, match=flag):
            generate.main(init="random", preset="tiny", device="cpu", **kwargs)


def profile_rows(step_seconds: list[float]) -> list[dict]:
    """profile_row at each mark of a record whose 10 steps take these seconds, each reading 1 MB
    at a roofline of 1 GB/s: a step of 1 ms is 100% of it, a faster one is above."""
    rec = dict(policy="full", batch_size=1, step_s=step_seconds, policy_s=[0.0] * len(step_seconds),
               kv_read=[100] * len(step_seconds), kv_held=[100] * len(step_seconds), peak_alloc_bytes={},
               base_alloc_bytes=0, kv_buffer_bytes=10 ** 6)
    a = dict(kv_slot_bytes_per_row=1024)
    return [view.profile_row(rec, a, hi, hi - 5, hi, 0, 1e9, lambda a, live, pred: 1e6,
                             lambda a, live, pred, batch: 1e6) for hi in (5, 10)], rec


def test_a_profile_row_never_prints_more_than_100_percent_of_its_roofline():
    (slow, fast), _ = profile_rows([1.25e-3] * 5 + [0.9e-3] * 5)  # 80% of the roofline, then 111%
    assert slow["roofline_fraction"] == pytest.approx(0.8) and fast["roofline_fraction"] == pytest.approx(1 / 0.9)
    shares = [float(x) for line in map(view.format_profile_row, (slow, fast)) for x in re.findall(r"([\d.]+)%", line)]
    assert 80.0 in shares and max(shares) <= 100
    assert "  80.0% " in view.format_profile_row(slow) and " >100%? " in view.format_profile_row(fast)
    assert [view.roof_share(f) for f in (0.5, 1.0, 1.0001, 3.0)] == ["50.0%", "100.0%", ">100%?", ">100%?"]


def test_the_summary_says_the_bandwidth_probe_under_reads_when_a_mark_beats_the_roofline():
    rows, rec = profile_rows([1.25e-3] * 5 + [0.9e-3] * 5)
    rec.update(decoded=[(0, 10)], wall_s=0.01, evictions=0, eviction_cycle=None, policy_share=0.0)
    assert "1 of 2 marks faster than the roofline (>100%?): the bandwidth probe under-reads" in \
        view.format_profile_summary(rec, rows)
    assert "roofline" not in view.format_profile_summary(rec, rows[:1]) + view.format_profile_summary(rec)
