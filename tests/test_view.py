"""lab/view.py: the page, the raster and the terminal view agree with what the generation did."""

import html as html_lib
import io
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest
torch = pytest.importorskip("torch")
from hypothesis import example, given, settings
from hypothesis import strategies as st

import generate
from lab import policies, view
from lab.cli import UsageError
from lab.policies import make_policy
from model import GPT, PRESETS, KVCache, get_encoding


class Spans(HTMLParser):
    """The token spans of a page, per policy's section: (positions, classes, attributes), in
    order; and how many outlined prompt blocks each section has."""

    def __init__(self):
        super().__init__()
        self.sections, self.prompt_blocks = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append([])
            self.prompt_blocks.append(0)
        if tag == "div" and a.get("class") == "prompt":
            self.prompt_blocks[-1] += 1
        if tag == "span" and "data-w" in a:
            m = re.match(r"position (\d+)(?:-(\d+))?", a["title"])  # a group: its first and last token
            self.sections[-1].append((range(int(m[1]), int(m[2] or m[1]) + 1), set(a["class"].split()), a))


def run_with_keep_spy(monkeypatch, tmp_path, **kwargs):
    """generate.main on a random tiny model, recording each eviction's positions before and
    after (a compaction, or H2O native's one slot a step), independently of view.TraceLog:
    {policy: {(row, position) evicted}}."""
    evicted, current = {}, []

    def spy(real):
        def evict(cache, *args):
            before = cache.pos[:, :cache.length].clone()
            real(cache, *args)
            for b in range(before.shape[0]):
                gone = set(before[b].tolist()) - set(cache.pos[b, :cache.length].tolist())
                evicted.setdefault(current[-1], set()).update((b, p) for p in gone)
        return evict

    real_decode = generate.decode

    def decode(model, enc, meta, ids, policy, *args):
        current.append(policy.name)  # whose compactions follow
        return real_decode(model, enc, meta, ids, policy, *args)

    monkeypatch.setattr(KVCache, "keep", spy(KVCache.keep))
    monkeypatch.setattr(policies, "move_last_into", spy(policies.move_last_into))
    monkeypatch.setattr(generate, "decode", decode)
    page = str(tmp_path / "trace.html")
    out = kwargs.pop("out", io.StringIO())
    prompt = kwargs.pop("prompt", "Question: which tokens stay? <think>")
    stats = generate.main(init="random", preset="tiny", device="cpu", prompt=prompt,
                          max_new_tokens=150, temperature=1.0, html_path=page, out=out, **kwargs)
    return stats, open(page, encoding="utf-8").read(), evicted, out


@pytest.mark.parametrize("policy", ["dynts", "h2o+p", "window", "h2o-native"])  # (per head: layer 0's head 0)
def test_the_page_has_one_span_per_token_and_strikes_exactly_the_evicted(policy, monkeypatch, tmp_path):
    stats, page, evicted, _ = run_with_keep_spy(monkeypatch, tmp_path, policy=policy, budget=60, window=10,
                                                num_samples=2)
    parser = Spans()
    parser.feed(page)
    assert len(parser.sections) == 2 and stats["evictions"] > 0  # one section per sample
    for b, spans in enumerate(parser.sections):
        assert [p for r, _, _ in spans for p in r] == list(range(spans[-1][0][-1] + 1))  # every token, in order
        gone = {p for r, p in evicted[policy] if r == b}
        assert [bool(gone.intersection(r)) for r, _, _ in spans] == ["e" in classes for _, classes, _ in spans]
        assert parser.prompt_blocks[b] == 1  # the prompt, one outlined block


def test_several_policies_share_one_page_and_each_keeps_its_own_evictions(monkeypatch, tmp_path):
    all_stats, page, evicted, out = run_with_keep_spy(monkeypatch, tmp_path, policy="dynts,h2o+p", budget=60,
                                                      window=10)
    assert [s["policy"] for s in all_stats] == ["dynts", "h2o+p"]
    parser = Spans()
    parser.feed(page)
    assert len(parser.sections) == 2
    for name, spans in zip(["dynts", "h2o+p"], parser.sections):
        gone = {p for r, p in evicted[name] if r == 0}
        assert [bool(gone.intersection(r)) for r, _, _ in spans] == ["data-g" in a for _, _, a in spans]
    # the step control: its range covers every step, and the evictions it jumps to are steps that evicted
    last = int(re.search(r"id='step' min='0' max='(\d+)'", page).group(1))
    jumps = json.loads(re.search(r"id='evictions'>(.*?)</script>", page).group(1))
    assert last == max(s["new_tokens"] for s in all_stats) - 1 and jumps and max(jumps) <= last
    assert "== dynts ==" in out.getvalue() and "== h2o+p ==" in out.getvalue()


def test_text_is_text_on_the_page_and_in_the_terminal(monkeypatch, tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    prompt = "table: café ☕ 日本 <think>"
    _, page, _, tty = run_with_keep_spy(monkeypatch, tmp_path, policy="dynts", budget=60, window=10, prompt=prompt,
                                        out=Terminal())
    prompt_block = page.split("<div class='prompt'", 1)[1].split("</div>", 1)[0]
    assert all(f">{char}</span>" in prompt_block for char in "é☕日本")  # each character one span, whole
    assert "\ufffd" not in html_lib.unescape(prompt_block)
    assert "café ☕ 日本" in tty.getvalue().split("dynts:\n", 1)[1]  # the terminal's view, after the stream


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=40))
@example("<think>")  # a special token's text, typed: plain text here
def test_token_groups_decode_whole_characters(text):
    enc = get_encoding()
    ids = enc.encode(text, allowed_special=set(), disallowed_special=())  # "<think>" typed is text
    groups = view.token_groups(enc, ids)
    assert "".join(piece for _, _, piece in groups) == text  # nothing lost, nothing replaced
    assert [g[0] for g in groups[1:]] == [g[1] for g in groups[:-1]] and groups[-1][1] == len(ids)


def test_a_byte_that_never_decodes_keeps_to_itself():
    enc = get_encoding()  # byte-level: token id = byte
    assert view.token_groups(enc, [0xE6, ord("a"), 0xE6, 0x97, 0xA5]) == [(0, 1, "\ufffd"), (1, 2, "a"), (2, 5, "日")]
    assert view.token_groups(enc, [ord("a"), 0xE6]) == [(0, 1, "a"), (1, 2, "\ufffd")]  # cut at the end


def test_scores_and_labels_each_have_their_own_scale():
    policy = make_policy("h2o+p", 40, 8, 0.3, 4)
    log = view.TraceLog(policy)
    log.lengths, log.evictions = [4, 5, 6], [False, False, False]
    log.scores = {(0, p): 0.5 * p for p in range(4, 10)}  # attention sums: at most 4.5
    groups = [(p, p + 1, "x") for p in range(10)]
    page = view.page([view.Panel("h2o+p", log, 0, groups, 4, labels=[100.0] * 10)], "t")
    assert re.search(r"the score it ranked by: 0 <span class='bar'></span> 4.5 ", page)
    assert re.search(r"what the answer attended to \(x 1e4\): 0 <span class='bar'></span> 100 ", page)


def test_colours_meet_the_contrast_they_claim():
    def luminance(rgb):
        c = [v / 255 for v in rgb]
        c = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    def contrast(a, b):
        hi, lo = sorted([luminance(a), luminance(b)], reverse=True)
        return (hi + 0.05) / (lo + 0.05)

    grey = tuple(int(view.EVICTED_GREY[i:i + 2], 16) for i in (1, 3, 5))
    for value in (0.0, 1.0, 50.0, 682.0):  # kept (black) and evicted (grey) text on any shade of the scale
        shade = view.shade(value, 682.0, log_scale=True)
        background = tuple(int(shade[i:i + 2], 16) for i in (1, 3, 5))
        assert contrast((0, 0, 0), background) >= 4.5 and contrast(grey, background) >= 4.5
    assert view.shade(float("inf"), 1.0, True) == "" and view.shade(None, 1.0, True) == ""


def test_the_raster_shows_every_kept_token():
    live = torch.zeros(7000, 6000, dtype=torch.bool)  # (positions, steps): one token kept for 3 steps
    live[4321, 100:103] = True
    img = view.pooled(live)
    assert img.shape == (view.RASTER_BINS, view.RASTER_BINS) and int(img.sum()) >= 1
    rows = img.nonzero()[:, 0]
    assert all(abs(int(r) * 7000 / view.RASTER_BINS - 4321) < 2 * 7000 / view.RASTER_BINS for r in rows)


def test_the_raster_has_as_many_live_pixels_per_step_as_the_cache_holds():
    model = GPT(PRESETS["tiny"]).eval()
    policy = make_policy("window", 40, 8, 0.3, 20)
    log = view.TraceLog(policy)
    lengths = []  # after each step (its forward, then its eviction): the slots the cache holds

    def on_step(cache, eviction):
        log.on_step(cache, eviction)
        lengths.append(cache.length)

    tokens, stats = generate.generate(model, list(range(20)), policy, 120, num_samples=2, temperature=1.0,
                                      generator=torch.Generator().manual_seed(0), on_step=on_step)
    log.finish()
    assert stats["evictions"] >= 3 and max(lengths) == 39  # one below the budget: a full cache evicts at once
    for row in range(2):
        live = log.live(row, 20 + tokens.shape[1])  # (steps, positions)
        assert live.sum(dim=1).tolist() == lengths


def test_the_raster_png_is_written(monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    stats, _, _, _ = run_with_keep_spy(monkeypatch, tmp_path, policy="dynts,window", budget=60, window=10,
                                       plot_path=str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_the_page_needs_no_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # an import of it now fails
    _, page, _, _ = run_with_keep_spy(monkeypatch, tmp_path, policy="dynts,h2o+p", budget=60, window=10)
    assert page.startswith("<!doctype html>") and "<script" in page and "http" not in page  # no network


def test_a_terminal_gets_the_evicted_tokens_dimmed_and_a_pipe_plain_text(monkeypatch, tmp_path):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    _, _, _, tty = run_with_keep_spy(monkeypatch, tmp_path, policy="dynts", budget=60, window=10, out=Terminal())
    _, _, _, pipe = run_with_keep_spy(monkeypatch, tmp_path, policy="dynts", budget=60, window=10)
    assert "\x1b[2m" in tty.getvalue()
    assert "\x1b[" not in pipe.getvalue()


def test_the_page_works_in_a_real_browser(monkeypatch, tmp_path):
    """Headless Chromium (Qt WebEngine's, when installed): the page loads, the step control and the
    shading switch run without a console error, and stepping back hides what was not yet written."""
    pytest.importorskip("PyQt6.QtWebEngineWidgets")
    all_stats, _, _, _ = run_with_keep_spy(monkeypatch, tmp_path, policy="dynts,h2o+p", budget=60, window=10)
    done = subprocess.run([sys.executable, "-m", "lab.browser", str(tmp_path / "trace.html")], capture_output=True,
                          text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["first_eviction"] > 0 and seen["infos"] > 1
    for stats in all_stats:  # at the last step each column holds what its cache held at the end
        held = int(re.search(re.escape(stats["policy"]) + r" holds (\d+)", seen["last"]).group(1))
        assert held == stats["final_kv_tokens"]


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
