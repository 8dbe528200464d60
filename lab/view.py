"""See what a KV policy keeps: a record of one generation, drawn three ways.

`TraceLog` records, during `generate.generate`, the cache's length after every forward and,
at every eviction, which token positions left the cache and what the policy ranked each live
token by (for DynTS its predicted importance; +inf for the protected prompt and answer). From
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
import math
import re

import torch

INF = float("inf")


class TraceLog:
    """What a policy kept, for the pictures: pass `on_step=log.on_step` to generate.generate
    (after each step, with its eviction or None); `log.finish()` once it returns."""

    def __init__(self, policy):
        self.policy = policy
        self.lengths = []  # the cache's length after each forward, before its eviction (step 0 is the prefill)
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
            self._record(self.cache.pos[:, :self.cache.length], self.policy.ranking(self.cache))

    def live(self, row: int, n_positions: int) -> torch.Tensor:
        """(steps, n_positions) bool: which tokens of a row are in the cache after each forward."""
        steps = len(self.lengths)
        written = torch.tensor(self._written_by_step())  # (steps,): positions written so far
        pos = torch.arange(n_positions)
        gone = torch.tensor([self.evicted.get((row, p), steps) for p in range(n_positions)])
        step = torch.arange(steps)[:, None]
        return (pos[None] < written[:, None]) & (step <= gone[None])

    def _written_by_step(self) -> list[int]:
        """Tokens written after each forward: the prompt at step 0, then one per step."""
        prompt = self.lengths[0]
        return [prompt + i for i in range(len(self.lengths))]


# -----------------------------------------------------------------------------
# The page


STYLE = """body{font:14px/1.5 monospace;margin:2em;max-width:110ch}
.t{white-space:pre-wrap}.e{color:#bbb;text-decoration:line-through #ddd}.p{outline:1px solid #36c}
.n{text-decoration:underline 2px #c30}.legend span{margin-right:1.5em}h2{font-size:15px}"""


def needed_spans(answer: str, text: str) -> list[tuple[int, int]]:
    """Character spans in `text` of the statements the answer copies: for each item "A=kl" (or
    "A=kl>mn"), the first "kl, so A=kl." in the text."""
    spans = []
    for item in answer.split():
        letter, value = item[0], item[2:4]
        m = re.search(re.escape(f"{value}, so {letter}={value}."), text)
        if m:
            spans.append(m.span())
    return spans


def shade(score: float, lo: float, hi: float) -> str:
    """A background for a finite score: white for the row's lowest, deep orange for its highest
    (on a log scale when the scores are non-negative, as DynTS's are)."""
    if not math.isfinite(score):
        return ""
    if lo >= 0:
        score, lo, hi = math.log1p(score), math.log1p(lo), math.log1p(hi)
    a = 0.0 if hi <= lo else (score - lo) / (hi - lo)
    return f"background:rgba(255,140,0,{0.05 + 0.75 * a:.2f})"


def token_texts(enc, ids: list[int]) -> list[str]:
    """The text of each token, in order (a token that is part of a UTF-8 character shows as �)."""
    return [enc.decode_single_token_bytes(t).decode("utf-8", errors="replace") for t in ids]


def html(log: TraceLog, pieces: list[list[str]], title: str, verdicts: list[str] | None = None,
         answers: list[str] | None = None) -> str:
    """The page. pieces[b]: the text of each token of row b (prompt and generated, in order);
    verdicts[b]: a line about the answer; answers[b]: the expected answer, for underlining."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html_lib.escape(title)}</title>"
           f"<style>{STYLE}</style></head><body><h1>{html_lib.escape(title)}</h1>",
           "<p class='legend'><span style='background:rgba(255,140,0,.8)'>high score</span>"
           "<span style='background:rgba(255,140,0,.05)'>low score</span><span class='p'>protected (+inf)</span>"
           "<span class='e'>evicted (hover: when)</span><span class='n'>what the answer copies</span></p>"]
    for b, tokens in enumerate(pieces):
        finite = [s for (r, _), s in log.scores.items() if r == b and math.isfinite(s)]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
        text = "".join(tokens)
        needed = set()
        for start, end in needed_spans(answers[b], text) if answers else []:
            needed.update(range(start, end))
        out.append(f"<h2>sample {b}</h2><div>")
        c = 0
        for p, piece in enumerate(tokens):
            score = log.scores.get((b, p))
            classes = ["t"]
            if (b, p) in log.evicted:
                classes.append("e")
            if score == INF:
                classes.append("p")
            if c in needed:
                classes.append("n")
            tip = f"position {p}; score {score:.4g}" if score is not None else f"position {p}; never ranked"
            if (b, p) in log.evicted:
                tip += f"; evicted after step {log.evicted[(b, p)]}"
            style = shade(score, lo, hi) if score is not None else ""
            out.append(f"<span class='{' '.join(classes)}' data-pos='{p}' style='{style}' "
                       f"title='{tip}'>{html_lib.escape(piece)}</span>")
            c += len(piece)
        out.append(f"</div><p><b>{html_lib.escape(verdicts[b]) if verdicts else ''}</b></p>")  # the answer, checked
    out.append("</body></html>")
    return "".join(out)


# -----------------------------------------------------------------------------
# The raster and the terminal


def raster(logs: dict[str, TraceLog], n_positions: int, path: str, row: int = 0):
    """One panel per policy: x = decoding step, y = token position, dark where the token is in
    the cache after that step's forward."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(logs), figsize=(5.5 * len(logs), 4.5), squeeze=False)
    for ax, (name, log) in zip(axes[0], logs.items()):
        live = log.live(row, n_positions)  # (steps, positions)
        ax.imshow(live.T.float().numpy(), aspect="auto", origin="lower", cmap="Greys", interpolation="nearest")
        ax.set_title(f"{name}: {len({p for (r, p) in log.evicted if r == row})} tokens evicted")
        ax.set_xlabel("decoding step")
        ax.set_ylabel("token position")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ansi(log: TraceLog, tokens: list[str], row: int = 0) -> str:
    """The trace with the evicted tokens dimmed, for a terminal."""
    out = []
    for p, piece in enumerate(tokens):
        out.append(f"\x1b[2m{piece}\x1b[0m" if (row, p) in log.evicted else piece)
    return "".join(out)


def show(log: TraceLog, enc, prompt: list[int], rows: list[list[int]], out, title: str, problem=None,
         html_path=None, plot_path=None):
    """generate.py's pictures of one generation: on a terminal the trace again with the evicted
    tokens dimmed; with `html_path` the page; with `plot_path` the raster."""
    from lab import task
    log.finish()
    pieces = [token_texts(enc, prompt + row) for row in rows]  # each row's tokens, prompt first
    if out.isatty():
        out.write("\n" + ansi(log, pieces[0]) + "\n")
    if html_path:
        verdicts = answers = None
        if problem is not None:
            answers = [problem.answer] * len(rows)
            verdicts = [f"expected {problem.answer}: {'correct' if task.check_answer(problem, enc.decode(r)) else 'WRONG'}"
                        for r in rows]
        with open(html_path, "w") as f:
            f.write(html(log, pieces, title, verdicts, answers))
    if plot_path:
        raster({log.policy.name: log}, len(pieces[0]), plot_path)


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
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
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
            ax.annotate(f"{v:.2f}x", (m["step"], y), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=8, color="C1")
    for ax, title in zip(axes, ["throughput (tokens/s)", "KV memory, all rows (GB)", "GFLOPs per token"]):
        ax.set_ylim(bottom=0)
        ax.set_title(title + (": DynTS / full at the marks" if ax is axes[0] else ""))
        ax.set_xlabel("decoding steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    c = result["config"]
    fig.suptitle(f"{c['preset']}, batch {c['batch_size']}, prompt {c['prompt_len']}, {c['dtype']}, "
                 f"{result['device_name']}{', CUDA graphs' if c['cuda_graphs'] else ''}"
                 f"{', jumping to each mark' if c.get('jump') else ''} | DynTS budget {c['budget']}, "
                 f"window {c['window']}, ratio {c['ratio']} | {result['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
