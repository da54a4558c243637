"""Statistics that separate two methods run over the same seeds, the way `rliable` (Agarwal et al. 2021,
"Deep RL at the Edge of the Statistical Precipice") reports few-run results: the paired per-seed difference
with a t-interval and a bootstrap interval, the interquartile mean (IQM), the probability of improvement, and
the growth exponent k of mistakes ∝ t^k along the horizon (the seed lecture's O(εT²) against O(εT)).

Paired differences matter because seeds share what varies most between them (the expert's demonstrations,
the evaluation starts): two overlapping bands over 5 seeds can hide a difference that is positive on every
seed. scipy does the resampling and the rank statistic; rliable itself pins heavy plotting dependencies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

RESAMPLES = 10_000


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean and half-width of its 95% t-interval over independent seeds (0 for a single value)."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    half = 0.0 if n < 2 else float(stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return {"mean": float(x.mean()), "ci95": half, "n": n}


def bootstrap_ci(values: Sequence[float], statistic: Any = np.mean, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of `statistic` over `values` (one per seed); a point where they
    are all equal, or there is one."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2 or np.all(x == x[0]):
        point = float(statistic(x))
        return [point, point]
    res = stats.bootstrap((x,), statistic, n_resamples=RESAMPLES, method="percentile",
                          random_state=np.random.default_rng(seed))
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle half (a quarter cut from each end), robust to one outlying
    seed and less noisy than the median."""
    return float(stats.trim_mean(np.asarray(values, dtype=np.float64), 0.25))


def probability_of_improvement(a: Sequence[float], b: Sequence[float]) -> float:
    """P(A > B) + P(A = B) / 2 for a seed of A against a seed of B (the Mann-Whitney U over all pairs)."""
    return float(stats.mannwhitneyu(a, b).statistic / (len(a) * len(b)))


def paired(a: dict[int, float], b: dict[int, float], seed: int = 0) -> dict[str, Any] | None:
    """A − B over the seeds both have (`{seed: value}`): the per-seed differences, their mean with its 95%
    t-interval and bootstrap interval, both IQMs and the probability of improvement. None without 2 seeds."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    xa, xb = np.array([a[s] for s in common]), np.array([b[s] for s in common])
    diff = xa - xb
    return {"seeds": common, "differences": diff.round(6).tolist(), **mean_ci(diff),
            "bootstrap95": bootstrap_ci(diff, seed=seed), "iqm": [iqm(xa), iqm(xb)],
            "probability_of_improvement": probability_of_improvement(xa, xb)}


def horizon_exponent(cumulative: Sequence[float]) -> float | None:
    """k of mistakes(t) ∝ t^k, fitted by least squares in log-log over the steps where the cumulative count
    `cumulative` (index t-1) is positive, at log-spaced steps so that the long tail does not outweigh the
    start. About 1 for a constant mistake rate, 2 where errors compound (the rate grows with t). None where
    fewer than 3 distinct steps carry mistakes."""
    m = np.asarray(cumulative, dtype=np.float64)
    t = np.unique(np.geomspace(1, len(m), num=min(len(m), 50)).round().astype(int))
    t = t[m[t - 1] > 0]
    if len(t) < 3:
        return None
    return float(np.polyfit(np.log(t), np.log(m[t - 1]), 1)[0])
