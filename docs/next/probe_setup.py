"""What the probes in docs/next (walk_probe.py, why_wrong.py) share: their arguments checked
before any long work, a mistake ending in one line and a non-zero exit; the checkpoint loaded;
and the budget and window at a fraction of Full's peak on validation problems, as lab/eval.py's
--fractions sets them."""

import sys

from lab.checkpoint import load_checkpoint
from lab.policies import policy_class


def setup(prog: str, ckpt: str, n: str, fraction: str, names: list[str]):
    """(model, predictor, meta, n, fraction, budget, window), or exit with one line."""
    try:
        try:
            n, fraction = int(n), float(fraction)
        except ValueError:
            raise ValueError(f"N_PER_FAMILY {n!r} must be a whole number and FRACTION {fraction!r} a number") from None
        if n < 1:
            raise ValueError(f"N_PER_FAMILY {n}: must be at least 1")
        if not 0 < fraction < 1:
            raise ValueError(f"FRACTION {fraction}: must be between 0 and 1 (0.3: 30% of Full's peak)")
        for name in names:
            policy_class(name)
        model, predictor, meta = load_checkpoint(ckpt, flag="CKPT")
    except ValueError as e:  # UsageError is one
        sys.exit(f"{prog}: error: {e}")
    d = meta["decoding"]
    budget = round(fraction * d["full_peak_valid"])
    return model.eval(), predictor.eval(), meta, n, fraction, budget, round(d["window_fraction"] * budget)
