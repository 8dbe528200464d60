"""What each policy keeps, side by side, on one held-out problem:
`python -m lab.sidebyside --policies dynts,h2o+p --plot raster.png` (lab/view.py draws it)."""

import argparse

import generate
from lab import task
from lab.checkpoint import DEFAULT_CKPT, load_checkpoint
from lab.cli import UsageError, check_matplotlib, check_output_path, run_cli
from lab.policies import make_policy, policy_class
from lab.view import TraceLog, html, raster, token_texts
from model import get_encoding


def main(policies="dynts,h2o+p", problem=0, plot_path="raster.png", html_path=None, ckpt=None):
    """Decode one held-out problem under each policy (the checkpoint's budget) and draw their
    rasters side by side; --html writes the first policy's page."""
    check_output_path("--plot", plot_path)
    check_output_path("--html", html_path)
    names = [n.strip() for n in policies.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--policies {policies!r}: name at least one policy")
    for name in names:  # every name checked before the first decode
        try:
            policy_class(name)
        except ValueError as e:
            raise UsageError(f"--policies: {e}") from None
    check_matplotlib("--plot", plot_path)
    if not 0 <= problem < 10**4:
        raise UsageError(f"--problem must be in [0, 10000), got {problem}")
    model, predictor, meta = load_checkpoint(ckpt or DEFAULT_CKPT)
    model.eval()
    enc = get_encoding(meta["encoding"])
    p = task.problems("eval", problem + 1, **meta["task"])[problem]
    ids = enc.encode(p.prompt, allowed_special="all")
    d = meta["decoding"]
    logs, length = {}, 0
    for name in names:
        policy = make_policy(name, d["budget"], d["window"], d["ratio"], len(ids), predictor, enc)
        log = TraceLog(policy)
        tokens, _ = generate.generate(model, ids, policy, model.config.block_size - len(ids), eot_id=enc.eot_token,
                                      vocab_limit=enc.n_vocab, on_step=log.on_step)
        log.finish()
        row = tokens[0].tolist()
        row = row[:row.index(enc.eot_token) + 1] if enc.eot_token in row else row
        verdict = "correct" if task.check_answer(p, enc.decode(row)) else "WRONG"
        print(f"{name}: {verdict} ({len(row)} tokens)")
        logs[f"{name}, answer {verdict}"] = log
        length = max(length, len(ids) + len(row))
        if html_path and len(logs) == 1:
            with open(html_path, "w") as f:
                f.write(html(log, [token_texts(enc, ids + row)], f"{name} on held-out problem {problem}",
                             [f"expected {p.answer}: {verdict}"], [p.answer]))
    raster(logs, length, plot_path)
    print(f"wrote {plot_path}" + (f" and {html_path}" if html_path else ""))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lab.sidebyside", description=__doc__.splitlines()[0])
    ap.add_argument("--policies", default="dynts,h2o+p", help="comma-separated policies (default: dynts,h2o+p)")
    ap.add_argument("--problem", type=int, default=0, help="which held-out problem, 0-9999")
    ap.add_argument("--plot", dest="plot_path", default="raster.png", help="the PNG to write (needs matplotlib)")
    ap.add_argument("--html", dest="html_path", help="also the first policy's page")
    ap.add_argument("--ckpt", help="checkpoint (default: the shipped one)")
    return ap.parse_args(argv)


def cli(argv=None):
    run_cli("python -m lab.sidebyside", main, parse_args, argv)


if __name__ == "__main__":
    cli()
