"""Intervals and paired tests that respect how the comparison is run.

Every policy decodes the same problems with each of a few model seeds, greedily, so one cell of
the results (a policy at a budget) is a table of 0/1 outcomes over (model seed, problem), and the
design is crossed: every seed meets the same problems. Pooling the pairs as independent draws
gives intervals that are too narrow, since all the problems of one seed share that seed's luck.
- `wilson`: a proportion's 95% interval, for one seed's problems (independent draws);
- `crossed_bootstrap`: the pooled Pass@1's 95% interval, resampling the seeds and, for all of
  them at once, the problems, so that both sources of variation count;
- `mcnemar`: an exact paired test of two policies on the (seed, problem) pairs both decoded,
  used per seed (`paired_by_seed`), where the pairs are independent.
"""

import math

import numpy as np


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion k / n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar(a: list[bool], b: list[bool]) -> float:
    """Exact two-sided McNemar test of paired outcomes: the p-value that a and b are equally
    likely to be right, from the pairs where exactly one is (a binomial with p = 1/2)."""
    n01 = sum(x and not y for x, y in zip(a, b))
    n10 = sum(y and not x for x, y in zip(a, b))
    n, k = n01 + n10, min(n01, n10)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def crossed_bootstrap(outcome: dict[tuple, bool], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The 95% percentile interval of the mean of outcome[(model_seed, problem)]: each of n_boot
    replicates draws the model seeds with replacement and the problems with replacement (one
    draw shared by every seed, as the problems are), and takes the mean over the drawn pairs."""
    seeds = sorted({s for s, _ in outcome})
    problems = sorted({p for _, p in outcome})
    table = np.full((len(seeds), len(problems)), np.nan)  # (seeds, problems): 1, 0, or NaN where not decoded
    for (s, p), correct in outcome.items():
        table[seeds.index(s), problems.index(p)] = correct
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, len(seeds), (n_boot, len(seeds)))
    problem_draws = rng.integers(0, len(problems), (n_boot, len(problems)))
    means = [np.nanmean(table[s][:, p]) for s, p in zip(seed_draws, problem_draws)]
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def paired_by_seed(a: dict[tuple, bool], b: dict[tuple, bool]) -> list[dict]:
    """Policy a against policy b, one McNemar test per model seed, on the problems both decoded:
    [{model_seed, n_pairs, a, b (Pass@1 of each), p_value}, ...]."""
    tests = []
    for s in sorted({s for s, _ in a.keys() & b.keys()}):
        keys = sorted(k for k in a.keys() & b.keys() if k[0] == s)
        x, y = [a[k] for k in keys], [b[k] for k in keys]
        tests.append(dict(model_seed=s, n_pairs=len(keys), a=sum(x) / len(keys), b=sum(y) / len(keys),
                          p_value=mcnemar(x, y)))
    return tests


def percent(level: float) -> str:
    """A budget level (a fraction of Full's cache) as the tables write it, with its decimal where
    it has one: 30%, 35.5%."""
    return f"{100 * level:.1f}".removesuffix(".0") + "%"
