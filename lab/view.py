"""See what a KV policy keeps: a record of one generation, drawn three ways.

`TraceLog` records, during `generate.generate`, the cache's length after every forward and,
at every eviction, which token positions left the cache and what the policy ranked each live
token by (for DynTS its predicted importance; +inf for the protected prompt, ANSWER for the answer). From
it:
- `html(...)`: one self-contained page, a section per sample, every token shaded by its score,
  the evicted ones greyed with the step at which they went (on hover), the protected ones
  outlined, and for the task's problems the result statements the answer copies underlined;
- `raster(...)`: decoding step against token position, dark where the token is in the cache
  (matplotlib): evictions show as the sawtooth, kept tokens as horizontal stripes;
- `ansi(...)`: the trace for a terminal, with the evicted tokens dimmed.

It also writes profile.py's tables and draws its figure (`plot_profile`): throughput, KV memory
and FLOPs against decoding steps.
"""

import html as html_lib
import json
import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dynts import ANSWER, INF
from lab import task


class TraceLog:
    """What a policy kept, for the pictures: pass `on_step=log.on_step` to generate.generate
    (after each step, with its eviction or None); `log.finish()` once it returns."""

    def __init__(self, policy):
        self.policy = policy
        self.lengths = []  # the cache's length after each forward, before its eviction (step 0 is the prefill)
        self.evictions = []  # whether each step evicted
        self.evicted = {}  # (row, position) -> the step after which the token left the cache
        self.scores = {}  # (row, position) -> the policy's last ranking of the token
        self.kept, self.kept_until = None, 0  # the live slots' positions after the last eviction, and cache.seen then

    def _record(self, positions, ranking):
        for b, (row_pos, row_score) in enumerate(zip(positions.tolist(), ranking.float().tolist())):
            self.scores.update(((b, p), s) for p, s in zip(row_pos, row_score))

    def on_step(self, cache, eviction):
        """After a step: an eviction's slots, before it, are the live ones after the last
        eviction followed by every token written since."""
        self.cache = cache
        self.evictions.append(eviction is not None)
        if eviction is None:
            self.lengths.append(cache.length)
            return
        kept, ranking = eviction
        B, L = ranking.shape
        since = torch.arange(self.kept_until, cache.seen).expand(B, -1)  # (B, written since)
        before = since if self.kept is None else torch.cat([self.kept, since], dim=1)  # (B, L): each slot's position
        self.lengths.append(L)
        self._record(before, ranking)
        gone = torch.ones(B, L, dtype=torch.bool).scatter_(1, kept.cpu(), False)  # (B, L)
        step = len(self.lengths) - 1
        for b in range(B):
            self.evicted.update(((b, p), step) for p in before[b][gone[b]].tolist())
        self.kept, self.kept_until = cache.pos[:, :cache.length].cpu().clone(), cache.seen  # (a copy: the cache moves on)

    def finish(self):
        """The live tokens' final ranking (Full ranks nothing: its scores stay empty)."""
        if self.policy.budget is not None:
            ranking = self.policy.ranking(self.cache)
            ranking = ranking[0, :, 0] if ranking.dim() == 4 else ranking  # per head: layer 0's kv head 0, as cache.pos
            self._record(self.cache.pos[:, :self.cache.length], ranking)

    def live(self, row: int, n_positions: int) -> torch.Tensor:
        """(steps, n_positions) bool: which tokens of a row are in the cache after each step
        (its forward, then its eviction)."""
        steps = len(self.lengths)
        written = torch.tensor(self._written_by_step())  # (steps,): positions written so far
        pos = torch.arange(n_positions)
        gone = torch.tensor([self.evicted.get((row, p), steps) for p in range(n_positions)])
        step = torch.arange(steps)[:, None]
        return (pos[None] < written[:, None]) & (step < gone[None])

    def _written_by_step(self) -> list[int]:
        """Tokens written after each forward: the prompt at step 0, then one per step."""
        prompt = self.lengths[0]
        return [prompt + i for i in range(len(self.lengths))]


# -----------------------------------------------------------------------------
# Text as text, and what the pictures show of one generation


def utf8_state(data: bytes) -> str:
    """"whole" when the bytes decode, "cut" when they end inside a character, else "bad"."""
    try:
        data.decode("utf-8")
        return "whole"
    except UnicodeDecodeError as e:
        return "cut" if e.reason == "unexpected end of data" else "bad"


def token_groups(enc, ids: list[int]) -> list[tuple[int, int, str]]:
    """The tokens as (first, end, text) groups, in order: a token that ends inside a UTF-8
    character joins the next ones until the character is whole ("日" is three byte tokens, one
    group); bytes that never decode show as �, in a group of their own."""
    groups, start, buf = [], 0, b""
    for i, t in enumerate(ids):
        data = enc.decode_single_token_bytes(t)
        if buf and utf8_state(buf + data) == "bad":  # this token does not complete the cut character
            groups.append((start, i, buf.decode("utf-8", errors="replace")))
            start, buf = i, b""
        buf += data
        if utf8_state(buf) == "cut" and i + 1 < len(ids):
            continue  # a character cut at this token's end: the next token may complete it
        groups.append((start, i + 1, buf.decode("utf-8", errors="replace")))
        start, buf = i + 1, b""
    return groups


@dataclass
class Panel:
    """One policy's generation of one row, as the page and the raster show it."""
    name: str
    log: TraceLog
    row: int
    groups: list[tuple[int, int, str]]  # token_groups of the prompt and the generated tokens
    prompt_len: int
    think_end: int | None = None  # the position of `</think>`, if written
    verdict: str = ""  # "correct" or "WRONG" on a task's problem
    needed: dict[str, list[int]] = field(default_factory=dict)  # answer item's letter -> its first result's value positions
    n_items: int = 0  # the answer's items (some results may never have been written)
    labels: list[float] | None = None  # per token: the answer's attention (x LABEL_SCALE), with a full cache

    @property
    def n_tokens(self) -> int:
        return self.groups[-1][1] if self.groups else 0

    def gone(self, p: int):
        """The step after which token p left the cache, or None."""
        return self.log.evicted.get((self.row, p))

    def kept_at_end(self, p: int) -> bool:
        return self.gone(p) is None

    def summary(self) -> str:
        """The panel's line: its verdict and what it kept of what the answer needed."""
        kept = self.log.kept[self.row] if self.log.kept is not None else torch.zeros(0)
        older = int((kept >= self.prompt_len).sum()) - self.log.policy.window  # beside the window, at the last eviction
        parts = [f"answer {self.verdict}"] if self.verdict else []
        if self.n_items:
            kept = sum(all(self.kept_at_end(p) for p in value) for value in self.needed.values())
            unwritten = self.n_items - len(self.needed)
            parts.append(f"first result statements cached at the end: {kept} of {self.n_items}"
                         + (f" ({unwritten} never written)" if unwritten else ""))
        if self.log.kept is not None:
            parts.append(f"older generated tokens kept by the last eviction: {older}")
        parts.append(f"evictions: {sum(self.log.evictions)}")
        return f"{self.name}: " + ", ".join(parts)


def needed_positions(answer: str, groups: list[tuple[int, int, str]]) -> dict[str, list[int]]:
    """For each item of the answer ("A=kl" or "A=kl>mn") that the trace wrote, by its letter, the
    token positions of the value in its first result statement ("kl, so A=kl."): where the task
    puts what the answer copies (later restatements may also hold it)."""
    text, token_at = "", []  # token_at[c]: the first token of the group holding character c
    for first, _, piece in groups:
        text += piece
        token_at += [first] * len(piece)
    out = {}
    for item in answer.split():
        letter, value = item[0], item[2:4]
        m = re.search(re.escape(task.result_statement(letter, value)), text)
        if m:
            out[letter] = sorted({token_at[c] for c in range(m.end() - 3, m.end() - 1)})
    return out


# -----------------------------------------------------------------------------
# The page

EVICTED_GREY = "#3d3d3d"  # struck through; on white 10.9:1, on the deepest shade 4.6:1 (WCAG asks 4.5:1)
SHADE_TOP = (255, 140, 0)  # the highest score's background; black text on it: 9.0:1
STYLE = f"""body{{font:14px/1.5 monospace;margin:1.5em;color:#000;background:#fff}}
.grid{{display:grid;gap:1.5em}}.t{{white-space:pre-wrap}}
.e{{color:{EVICTED_GREY};text-decoration:line-through 1px}}.u{{visibility:hidden}}
.prompt{{outline:2px solid #2255cc;outline-offset:1px;margin-bottom:.3em}}.a{{outline:1px dashed #2255cc}}
.n{{text-decoration:underline 3px #c2185b}}.bar{{display:inline-block;width:14em;height:1em;vertical-align:middle;
background:linear-gradient(90deg,#fff,rgb{SHADE_TOP});border:1px solid #000}}h2{{font-size:15px;margin:.3em 0}}
.controls{{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #000}}"""

SCRIPT = """
const spans = [...document.querySelectorAll('span[data-w]')];
const W = spans.map(s => +s.dataset.w);
const G = spans.map(s => s.dataset.g === undefined ? Infinity : +s.dataset.g);
const slider = document.getElementById('step'), info = document.getElementById('stepinfo');
const evictions = JSON.parse(document.getElementById('evictions').textContent);
const panelOf = spans.map(el => el.closest('.panel'));
function show() {  // token i is sampled at step W[i] - 1 and written to the cache by step W[i]'s forward
  const s = +slider.value, live = {};
  spans.forEach((el, i) => {
    el.classList.toggle('u', W[i] - 1 > s);
    el.classList.toggle('e', G[i] <= s);
    const p = panelOf[i], k = p.dataset.name;
    live[k] = (live[k] || 0) + (W[i] <= Math.min(s, +p.dataset.last) && G[i] > s ? +el.dataset.n : 0);
  });
  info.textContent = 'after step ' + s + ': ' + [...document.querySelectorAll('.panel')].map(p =>
    p.dataset.name + ' holds ' + live[p.dataset.name]
    + (s > +p.dataset.last ? ' (done at step ' + p.dataset.last + ')' : '')).join(', ');
}
function jump(direction) {
  const s = +slider.value;
  const next = direction > 0 ? evictions.find(e => e > s) : [...evictions].reverse().find(e => e < s);
  if (next !== undefined) { slider.value = next; show(); }
}
function shadeBy(kind) {
  spans.forEach(el => { el.style.background = el.dataset[kind] || ''; });
  document.querySelectorAll('.scale').forEach(el => { el.hidden = el.dataset.kind !== kind; });
}
slider.addEventListener('input', show);
document.getElementById('prev').addEventListener('click', () => jump(-1));
document.getElementById('next').addEventListener('click', () => jump(1));
document.getElementById('shade').addEventListener('change', e => shadeBy(e.target.value));
show();
"""


def shade(value, top: float, log_scale: bool) -> str:
    """A background for a finite value in [0, top] (log1p scale when log_scale): white at 0,
    SHADE_TOP at top; "" for anything else (protected, padding, never ranked)."""
    if value is None or not math.isfinite(value) or value == ANSWER or top <= 0:
        return ""
    a = min(max(value, 0.0), top)
    a = math.log1p(a) / math.log1p(top) if log_scale else a / top
    r, g, b = (round(255 + (c - 255) * a) for c in SHADE_TOP)
    return f"#{r:02x}{g:02x}{b:02x}"


def scale_legend(kind: str, what: str, top: float, log_scale: bool, hidden: bool) -> str:
    """The colour scale with its numbers: 0, the middle and the top, as the shading maps them."""
    mid = math.expm1(math.log1p(top) / 2) if log_scale else top / 2
    return (f"<p class='scale' data-kind='{kind}'{' hidden' if hidden else ''}>{what}: 0 <span class='bar'></span> "
            f"{top:.3g} ({'log' if log_scale else 'linear'} scale: the bar's middle is {mid:.3g})</p>")


def panel_html(pn: Panel) -> str:
    """One policy's column: its summary, its colour scales, and the trace, one span per group."""
    policy = pn.log.policy
    by_position = getattr(policy, "scores_are_positions", False)
    scores = [pn.log.scores.get((pn.row, p)) for p in range(pn.n_tokens)]
    finite = [s for s in scores if s is not None and math.isfinite(s) and s != ANSWER]
    top = max(finite, default=0.0) if not by_position else 0.0  # each on its own scale: their units differ
    log_scale = min(finite, default=0.0) >= 0
    labels = pn.labels or []
    label_top = max(labels, default=0.0)
    out = [f"<section class='panel' data-name='{html_lib.escape(pn.name)}' data-last='{len(pn.log.lengths) - 1}'>"
           f"<h2>{html_lib.escape(pn.summary())}</h2>"]
    if getattr(policy, "positions", None) is not None and policy.positions.dim() == 4:  # lab.policies.PerHead
        out.append("<p>each layer and kv head keeps its own tokens: shown, layer 0's kv head 0</p>")
    if by_position:
        out.append("<p class='scale' data-kind='s'>its score is a position (recency): not shaded</p>")
    elif finite:
        out.append(scale_legend("s", "the score it ranked by", top, log_scale, hidden=False))
    if labels:
        out.append(scale_legend("l", "what the answer attended to (x 1e4)", label_top, True, hidden=True))
    out.append("<div>")
    needed = {p for value in pn.needed.values() for p in value}
    in_prompt = False
    for first, end, piece in pn.groups:
        if first < pn.prompt_len and not in_prompt:
            out.append("<div class='prompt' title='the prompt'>")  # one outlined block
            in_prompt = True
        if first >= pn.prompt_len and in_prompt:
            out.append("</div>")
            in_prompt = False
        positions = range(first, end)
        gone = [g for g in map(pn.gone, positions) if g is not None]  # when each of its tokens left
        group_scores = [scores[p] for p in positions if scores[p] is not None]
        score = max(group_scores) if group_scores else None
        label = sum(labels[p] for p in positions) if labels else None
        classes = ["t"] + (["e"] if gone else []) + (["n"] if needed.intersection(positions) else [])
        if score == ANSWER:
            classes.append("a")  # the answer
        tip = f"position {first}" + (f"-{end - 1}" if end - first > 1 else "")
        tip += ("; never ranked" if score is None else "; protected (+inf)" if score == INF else
                "; the answer (ranked above thinking)" if score == ANSWER else f"; score {score:.4g}")
        tip += f"; the answer's attention x 1e4: {label:.4g}" if label is not None else ""
        tip += f"; evicted after step {min(gone)}" if gone else ""
        background = shade(score, top, log_scale) if not by_position else ""
        attrs = (f"data-w='{max(0, first - pn.prompt_len + 1)}' data-n='{end - first}'"
                 + (f" data-g='{min(gone)}'" if gone else "") + f" data-s='{background}'"
                 + (f" data-l='{shade(label, label_top, True)}'" if labels else ""))
        out.append(f"<span class='{' '.join(classes)}' {attrs} style='background:{background}' "
                   f"title='{html_lib.escape(tip, quote=True)}'>{html_lib.escape(piece)}</span>")
    out.append("</div></div></section>" if in_prompt else "</div></section>")
    return "".join(out)


def page(panels: list[Panel], title: str) -> str:
    """One self-contained page (no network): a column per panel, each token shaded by the score
    its policy ranked it by or by what the answer attended to, and a step control that shows
    what each cache held after any step (the page opens at the end)."""
    last = max(len(pn.log.lengths) for pn in panels) - 1
    evictions = sorted({i for pn in panels for i, e in enumerate(pn.log.evictions) if e})
    has_labels = any(pn.labels for pn in panels)
    controls = (f"<div class='controls'><label>step <input type='range' id='step' min='0' max='{last}' "
                f"value='{last}' style='width:40em'></label> <button id='prev'>previous eviction</button> "
                f"<button id='next'>next eviction</button> <span id='stepinfo'></span><br>"
                "<small>a step is one generated token; a token's position (hover) counts from the prompt's "
                "first token</small><br>"
                "<label>shade by <select id='shade'><option value='s'>the score it ranked by</option>"
                + ("<option value='l'>what the answer attended to</option>" if has_labels else "")
                + "</select></label> <span class='prompt'>the prompt</span> "
                "<span class='a'>the answer (kept before any thinking token)</span> <span class='e'>evicted</span> "
                "<span class='n'>a first result statement's value</span></div>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html_lib.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html_lib.escape(title)}</h1>{controls}"
            f"<div class='grid' style='grid-template-columns:repeat({len(panels)},minmax(0,1fr))'>"
            + "".join(panel_html(pn) for pn in panels)
            + f"</div><script type='application/json' id='evictions'>{json.dumps(evictions)}</script>"
            f"<script>{SCRIPT}</script></body></html>")


# -----------------------------------------------------------------------------
# The raster and the terminal

RASTER_BINS = 400  # at most this many pixel rows and columns of data per panel: each gets a whole pixel


def pooled(live: torch.Tensor, bins: int = RASTER_BINS) -> torch.Tensor:
    """(positions, steps) -> at most (bins, bins): a cell is 1 when any token and step it covers
    is in the cache, so that no kept token falls between two pixels."""
    h, w = live.shape
    return F.adaptive_max_pool2d(live.float()[None, None], (min(h, bins), min(w, bins)))[0, 0]


def raster(panels: list[Panel], path: str):
    """One panel per policy: decoding step (x) against token position (y), black where the token
    is in the cache after that step (its eviction included, as on the page); bands for the
    prompt, the thinking and the answer; each first result statement's value marked on the
    right, filled when cached at the end."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    bands = [("prompt", "#2255cc"), ("thinking", "#999999"), ("answer", "#2e7d32")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 5.6), squeeze=False, dpi=130)
    for ax, pn in zip(axes[0], panels):
        n, steps = pn.n_tokens, len(pn.log.lengths)
        live = pn.log.live(pn.row, n)  # (steps, positions)
        ax.imshow(pooled(live.T).numpy(), aspect="auto", origin="lower", cmap="Greys", vmin=0, vmax=1,
                  interpolation="nearest", extent=(0, steps, 0, n))
        think_end = pn.think_end + 1 if pn.think_end is not None else n
        for (name, colour), (lo, hi) in zip(bands, [(0, pn.prompt_len), (pn.prompt_len, think_end), (think_end, n)]):
            if hi > lo:  # a strip left of the raster, and its edge across it
                ax.add_patch(Rectangle((-0.045, lo), 0.03, hi - lo, transform=ax.get_yaxis_transform(),
                                       color=colour, clip_on=False))
                ax.axhline(lo, color=colour, lw=0.6, ls="--")
        for letter, value in pn.needed.items():
            kept = all(pn.kept_at_end(p) for p in value)
            ax.plot([1.02], [value[0]], marker="<", ms=7, color="#c2185b", mfc="#c2185b" if kept else "white",
                    transform=ax.get_yaxis_transform(), clip_on=False)
            ax.text(1.045, value[0], letter, color="#c2185b", fontsize=8, va="center", transform=ax.get_yaxis_transform())
        ax.set_title(pn.summary().replace(": ", ":\n", 1).replace(", older", ",\nolder"), fontsize=8)
        ax.set_xlabel("decoding step")
        ax.set_ylabel("token position", labelpad=14)
    handles = [Patch(color="black", label="in the cache (a pixel pools several tokens and steps: black if any is)")] + [
        Patch(color=c, label=name) for name, c in bands] + [Line2D([], [], marker="<", ls="", color="#c2185b",
                                                                   label="the first result statement of A, B, C (filled: cached at the end)")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def ansi(panel: Panel) -> str:
    """The trace with the evicted characters dimmed, for a terminal."""
    return "".join(f"\x1b[2m{piece}\x1b[0m" if any(panel.gone(p) is not None for p in range(first, end)) else piece
                   for first, end, piece in panel.groups)


def show(runs, model, enc, prompt: list[int], meta: dict, problem=None, out=None, html_path=None, plot_path=None):
    """generate.py's pictures of its generations, runs = [(stats, rows, log)] one per policy: on
    a terminal each trace again with the evicted tokens dimmed; with `html_path` the page, with
    `plot_path` the raster (one panel per policy; per sample when there is one policy)."""
    from dynts import LABEL_SCALE, importance_labels
    panels = []
    for stats, rows, log in runs:
        log.finish()
        for b, row in enumerate(rows if len(runs) == 1 else rows[:1]):
            ids = prompt + row
            think_end = next((i for i in range(len(prompt), len(ids)) if ids[i] == meta["end_think_id"]), None)
            groups = token_groups(enc, ids)
            labels = None
            if html_path and think_end is not None and think_end + 1 < len(ids):  # what the answer attended to
                tokens = torch.tensor(ids, device=model.wte.weight.device)
                with torch.no_grad():
                    labels = (LABEL_SCALE * importance_labels(model, tokens, think_end, len(ids))[0]).tolist()
            name = log.policy.name + (f", sample {b}" if len(rows) > 1 and len(runs) == 1 else "")
            panels.append(Panel(name, log, b, groups, len(prompt), think_end,
                                verdict=("correct" if task.check_answer(problem, enc.decode(row)) else "WRONG")
                                if problem is not None else "",
                                needed=needed_positions(problem.answer, groups) if problem is not None else {},
                                n_items=len(problem.answer.split()) if problem is not None else 0,
                                labels=labels))
    if out is not None and out.isatty():
        for pn in panels:
            out.write(f"\n{pn.name}:\n{ansi(pn)}\n")
    what = f"a held-out {problem.family} problem (expected {problem.answer})" if problem is not None else "the prompt"
    title = f"{', '.join(run[2].policy.name for run in runs)} on {what}"
    if html_path:
        with open(html_path, "w") as f:
            f.write(page(panels, title))
    if plot_path:
        raster(panels, plot_path)


# -----------------------------------------------------------------------------
# profile.py's tables and figure


def profile_row(rec: dict, a: dict, step: int, lo: int, hi: int, jumped_to: int, bandwidth: float, flops_per_token,
                bytes_per_step) -> dict:
    """The numbers at one mark of a profile.py record: throughput and roofline over the steps (lo,
    hi] timed for it, decoded after a jump to step `jumped_to` (0: from the prompt). `a`:
    costs.analytic's counts; `bandwidth`: the probe's (timing.read_bandwidth), B/s; flops_per_token
    and bytes_per_step: costs.py's formulas. roofline_fraction is kept as measured, above 1 too:
    the table shows that as a question (format_profile_row), never as a share."""
    with_pred, batch = rec["policy"] == "dynts", rec["batch_size"]
    seconds = sum(rec["step_s"][lo:hi])
    read = sum(bytes_per_step(a, s, with_pred, batch) for s in rec["kv_read"][lo:hi])
    peak = rec["peak_alloc_bytes"].get(step)
    return dict(
        step=step, batch=batch, timed=[lo + 1, hi], jumped_to=jumped_to,
        tokens_per_s=batch * (hi - lo) / seconds,
        roofline_tokens_per_s=batch * (hi - lo) * bandwidth / read,
        roofline_fraction=read / bandwidth / seconds,
        bytes_per_step=read / (hi - lo),
        kv_read=rec["kv_read"][step - 1],
        kv_held=rec["kv_held"][step - 1],
        kv_live_gb=rec["kv_held"][step - 1] * batch * a["kv_slot_bytes_per_row"] / 1e9,
        kv_buffer_gb=rec["kv_buffer_bytes"] / 1e9,
        peak_alloc_gb=peak / 1e9 if peak is not None else None,
        peak_above_weights_gb=(peak - rec["base_alloc_bytes"]) / 1e9 if peak is not None else None,
        gflops_per_token=flops_per_token(a, rec["kv_read"][step - 1], with_pred) / 1e9,
        policy_share=sum(rec["policy_s"][lo:hi]) / seconds,
    )


PROFILE_ROW_FMT = "{step:>6} {tokens_per_s:>9.1f} {roofline_tokens_per_s:>9.1f} {roof_pct:>7} {kv_held:>7} " \
                  "{kv_live_gb:>8.4g} {kv_buffer_gb:>8.4g} {peak:>9} {gflops_per_token:>8.4g} {pol_pct:>7.2f}% " \
                  "{steps_timed:>12}"
PROFILE_ROW_HEAD = f"{'step':>6} {'tok/s':>9} {'roof t/s':>9} {'%roof':>7} {'KV tok':>7} {'KV GB':>8} " \
                   f"{'buf GB':>8} {'alloc GB':>9} {'GFLOP/t':>8} {'policy':>8} {'steps timed':>12}"


def roof_share(fraction: float) -> str:
    """A share of the roofline, which a measured step cannot beat: above it, the bandwidth probe
    under-read the device, and the share is a question, not a number over 100%."""
    return f"{100 * fraction:.1f}%" if fraction <= 1 else ">100%?"


def format_profile_row(r: dict) -> str:
    """One mark of profile.py's table. %roof: the roofline's share (roof_share); alloc: the peak
    allocated while decoding, less the weights; steps timed: what the throughput is over, '*' when
    the steps before were jumped over."""
    peak = f"{r['peak_above_weights_gb']:.3f}" if r["peak_alloc_gb"] is not None else "-"
    timed = f"{r['timed'][0]}-{r['timed'][1]}" + ("*" if r["jumped_to"] else "")
    return PROFILE_ROW_FMT.format(**r, roof_pct=roof_share(r["roofline_fraction"]), pol_pct=100 * r["policy_share"],
                                  peak=peak, steps_timed=timed)


def roofline_bandwidth(result: dict) -> tuple[float, str]:
    """(B/s, what it is) of a profile.py result: the read probe's, or the copy probe's in older JSONs."""
    if "read_bandwidth_Bps" in result:
        return result["read_bandwidth_Bps"], "read bandwidth {:.3f} TB/s (a read-only pass, the best of 10)"
    return result["copy_bandwidth_Bps"], "copy bandwidth {:.3f} TB/s (read + write)"


def format_profile_header(result: dict, fits: str = "") -> str:
    """The two lines that open profile.py's output: the run's settings (`fits`: how --batch-size max
    chose the batches), the roofline's bandwidth and the bytes a step reads."""
    a, c = result["analytic"], result["config"]
    bandwidth, what = roofline_bandwidth(result)
    return (f"profile.py: {c['preset']} ({a['matmul_params'] / 1e6:.1f} M matmul params), batch "
            f"{c['batch_size']}{fits}, prompt {c['prompt_len']}, {c['steps']} steps, {c['dtype']} on "
            f"{result['device_name']}{' with CUDA graphs' if c['cuda_graphs'] else ''}"
            f"{', jumping to each mark (*: the steps before those timed were not decoded)' if c['jump'] else ''}\n"
            f"{what.format(bandwidth / 1e12)} | weights read per step "
            f"{a['weight_bytes'] / 1e9:.4g} GB | KV per slot per row {a['kv_slot_bytes_per_row'] / 2**10:.1f} KiB")


def format_profile_summary(rec: dict, rows: list[dict] = ()) -> str:
    """The line under a policy's table: the steps decoded and how fast, the evictions, the policy's
    share; and, if any of its `rows` (profile_row's) ran faster than the roofline, that the
    bandwidth probe under-reads this device."""
    timed = sum(t is not None for t in rec["step_s"])
    cycle = f" (one every {rec['eviction_cycle']} steps)" if rec["eviction_cycle"] else ""
    over = [r["step"] for r in rows if r["roofline_fraction"] > 1]
    return ("steps " + ", ".join(f"{lo + 1}-{hi}" for lo, hi in rec["decoded"]) + f" decoded in {rec['wall_s']:.2f} "
            f"s ({rec['batch_size'] * timed / rec['wall_s']:.1f} tokens/s) | evictions {rec['evictions']}{cycle} | "
            f"policy (predictor, selection, compaction) {100 * rec['policy_share']:.2f}% of decode time"
            + (f" | {len(over)} of {len(rows)} marks faster than the roofline (>100%?): the bandwidth probe "
               "under-reads this device (every %roof reads high)" if over else ""))


def profile_multipliers(rows: dict, base: str = "full") -> dict:
    """policy / base at each common mark, each at its own batch: throughput, live KV per row (a
    sequence's, as the paper's), the buffers (all rows: ~1x at equal memory), GFLOPs per token, and
    how much of the speed-up that the bytes read per token allow (the ratio of the roofline
    throughputs) is achieved."""
    out, by_step = {}, {r["step"]: r for r in rows[base]}
    for name, rs in rows.items():
        if name == base:
            continue
        out[name] = []
        for r in rs:
            f = by_step.get(r["step"])
            if f is None:
                continue
            speedup = r["tokens_per_s"] / f["tokens_per_s"]
            allowed = r["roofline_tokens_per_s"] / f["roofline_tokens_per_s"]
            out[name].append(dict(step=r["step"], throughput=speedup, kv_live=r["kv_held"] / f["kv_held"],
                                  kv_buffer=r["kv_buffer_gb"] / f["kv_buffer_gb"],
                                  gflops=r["gflops_per_token"] / f["gflops_per_token"],
                                  bytes_allowed_speedup=allowed, speedup_efficiency=speedup / allowed))
    return out


def format_profile_multipliers(name: str, ms: list[dict], batches: dict, paper_marks: list[int],
                               paper_multipliers: dict, base: str = "full") -> str:
    """The multipliers' table, with the paper's (paper_multipliers[k][j] at paper_marks[j]) for dynts."""
    paper = name == "dynts"
    lines = [f"{name} / {base}, batch {batches[name]} / {batches[base]}:",
             f"{'step':>6} {'tput':>7} {'KV/row':>8} {'KV buf':>7} {'GFLOPs':>7} {'bytes ratio':>11} {'of allowed':>10}"
             + ("   paper: tput  KV  GFLOPs" if paper else "")]
    for m in ms:
        line = (f"{m['step']:>6} {m['throughput']:>6.2f}x {m['kv_live']:>7.2f}x {m['kv_buffer']:>6.2f}x "
                f"{m['gflops']:>6.2f}x {m['bytes_allowed_speedup']:>10.2f}x {100 * m['speedup_efficiency']:>9.1f}%")
        if paper and m["step"] in paper_marks:
            j = paper_marks.index(m["step"])
            line += "   " + "  ".join(f"{paper_multipliers[k][j]:.2f}x" if paper_multipliers[k][j] else "-"
                                      for k in ("throughput", "kv_memory", "gflops"))
        lines.append(line)
    return "\n".join(lines)


def plot_profile(result: dict, path: str, flops_per_token, bytes_per_step, paper_marks: list[int]):
    """profile.py's figure: three panels against decoding steps, like the paper's efficiency
    figure (throughput with its memory roofline, KV memory, GFLOPs per token), with the DynTS /
    full multipliers written at the paper's marks. `result` is profile.main's (its JSON);
    flops_per_token and bytes_per_step are costs.py's formulas, (analytic, live, with_predictor[,
    batch]). Steps jumped over (--jump) are gaps; throughput is drawn where a whole window was decoded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, w, nan = result["analytic"], result["config"]["tput_window"], float("nan")
    if "kv_slot_bytes_per_row" not in a:  # saved before batches per policy: kv_slot_bytes was one slot of all rows
        a = dict(a, kv_slot_bytes_per_row=a["kv_slot_bytes"] / result["config"]["batch_size"])
    fig, axes = plt.subplots(3, 1, figsize=(9, 11), sharex=True)  # stacked, as the paper draws them
    for name, rec in result["records"].items():
        with_pred, batch = name == "dynts", rec.get("batch_size", result["config"]["batch_size"])
        steps = list(range(1, len(rec["step_s"]) + 1))
        csum, n_timed = [0.0], [0]  # running sums of the step times and of the steps timed
        for s in rec["step_s"]:
            csum.append(csum[-1] + (s or 0.0))
            n_timed.append(n_timed[-1] + (s is not None))
        tput = [batch * w / (csum[i] - csum[i - w]) if i >= w and n_timed[i] - n_timed[i - w] == w else nan
                for i in steps]
        label = {"full": "full cache", "dynts": "DynTS"}.get(name, name)
        if batch != result["config"]["batch_size"]:
            label += f", batch {batch}"
        read = [k if k is not None else nan for k in rec["kv_read"]]
        line, = axes[0].plot(steps, tput, label=label, lw=1.2)
        roof = [batch * roofline_bandwidth(result)[0] / bytes_per_step(a, k, with_pred, batch) for k in read]
        axes[0].plot(steps, roof, color=line.get_color(), ls=":", lw=1, label=f"{label}, memory roofline")
        axes[1].plot(steps, [k * batch * a["kv_slot_bytes_per_row"] / 1e9 if k is not None else nan
                             for k in rec["kv_held"]], color=line.get_color(), lw=1.2, label=f"{label}, live")
        axes[1].axhline(rec["kv_buffer_bytes"] / 1e9, color=line.get_color(), ls="--", lw=0.8, label=f"{label}, buffers")
        axes[2].plot(steps, [flops_per_token(a, k, with_pred) / 1e9 for k in read], color=line.get_color(),
                     lw=1.2, label=label)
        for r in result["marks"].get(name, []) if result["config"].get("jump") else []:  # each mark's mean
            axes[0].plot(r["step"], r["tokens_per_s"], "o", color=line.get_color(), ms=4)
    rows = {r["step"]: r for r in result["marks"].get("dynts", [])}
    shown = [m for m in result["multipliers"].get("dynts", []) if m["step"] in paper_marks] \
        or result["multipliers"].get("dynts", [])  # a short run: at its own marks
    for m in shown:
        r = rows[m["step"]]
        for ax, y, v in [(axes[0], r["tokens_per_s"], m["throughput"]), (axes[1], r["kv_live_gb"], m["kv_live"]),
                         (axes[2], r["gflops_per_token"], m["gflops"])]:
            ax.plot(m["step"], y, "o", color="C1", ms=3)  # the mark, and its multiplier on a white patch
            ax.annotate(f"{v:.2f}x", (m["step"], y), textcoords="offset points", xytext=(0, 7), ha="center",
                        fontsize=8, color="C1", bbox=dict(fc="white", ec="none", alpha=0.85, pad=1))
    for ax, title in zip(axes, ["throughput (tokens/s)", "KV memory, all rows (GB)", "GFLOPs per token"]):
        ax.set_ylim(bottom=0)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_title("DynTS / full cache written above each of the paper's marks", fontsize=9)
    axes[-1].set_xlabel("decoding steps")
    axes[-1].set_xlim(left=0)
    c = result["config"]
    fig.suptitle(f"{c['preset']}, batch {c['batch_size']}, prompt {c['prompt_len']}, {c['dtype']}, "
                 f"{result['device_name']}{', CUDA graphs' if c['cuda_graphs'] else ''}"
                 f"{', jumping to each mark' if c.get('jump') else ''}\nDynTS budget {c['budget']}, "
                 f"window {c['window']}, ratio {c['ratio']} | {result['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
