"""Paired comparisons over seeds: per-method spread and, per method vs ``standard``, the mean
paired difference with a bootstrap CI, a Wilcoxon signed-rank p-value, the smallest
difference the run could detect, and a verdict that follows the CI (scipy / numpy).

Example:
    >>> row = compare([0.90, 0.88, 0.91, 0.87], [0.89, 0.86, 0.91, 0.85], "r3f")
    >>> row["verdict"], round(row["mean_difference"], 4)
    ('r3f ahead of standard', 0.0125)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000
POWER = 0.8


def describe(values: Sequence[float], seeds: Sequence[int]) -> dict[str, Any]:
    """Mean, sample SD (n − 1), median and worst (lowest) value with its seed."""
    x = [float(v) for v in values]
    worst = min(range(len(x)), key=x.__getitem__)
    return {
        "mean": statistics.fmean(x),
        "sd": statistics.stdev(x) if len(x) > 1 else 0.0,
        "median": statistics.median(x),
        "worst": x[worst],
        "worst_seed": int(seeds[worst]),
        "n": len(x),
    }


def compare(
    method: Sequence[float], baseline: Sequence[float], name: str, seed: int = 0
) -> dict[str, Any]:
    """``method − baseline`` paired by position (seed): mean, percentile-bootstrap CI
    (``RESAMPLES`` resamples of the seeds, ``CONFIDENCE`` level, seeded), two-sided Wilcoxon
    signed-rank p (zeros dropped; 1.0 when every difference is 0), the smallest true mean
    difference a paired t-test at α = 0.05 would detect with 80% power given the observed
    SD of the differences (noncentral t), and the verdict: ahead when the CI lies above 0,
    behind when below, otherwise not separated."""
    from scipy import stats

    d = [float(a) - float(b) for a, b in zip(method, baseline, strict=True)]
    row: dict[str, Any] = {"method": name, "n": len(d), "differences": d}
    row["mean_difference"] = statistics.fmean(d)
    if len(d) < 2:
        row.update(ci_low=None, ci_high=None, wilcoxon_p=None, detectable=None)
        row["verdict"] = f"{name}: one paired seed, no comparison"
        return row
    if all(v == d[0] for v in d):
        row["ci_low"] = row["ci_high"] = float(d[0])
    else:
        ci = stats.bootstrap(
            (np.array(d),),
            np.mean,
            confidence_level=CONFIDENCE,
            n_resamples=RESAMPLES,
            method="percentile",
            rng=np.random.default_rng(seed),
        ).confidence_interval
        row["ci_low"], row["ci_high"] = float(ci.low), float(ci.high)
    row["wilcoxon_p"] = 1.0 if not any(d) else float(stats.wilcoxon(d).pvalue)
    row["detectable"] = detectable_difference(statistics.stdev(d), len(d))
    row["verdict"] = verdict(name, row["ci_low"], row["ci_high"])
    return row


def verdict(name: str, low: float, high: float) -> str:
    """The CI in words: ahead (CI above 0), behind (below 0) or not separated."""
    if low > 0:
        return f"{name} ahead of standard"
    if high < 0:
        return f"{name} behind standard"
    return f"{name} not separated from standard"


def detectable_difference(
    sd: float, n: int, alpha: float = 0.05, power: float = POWER
) -> float | None:
    """The true mean paired difference a two-sided paired t-test at ``alpha`` detects with
    probability ``power`` over ``n`` seeds whose differences have standard deviation ``sd``
    (solved exactly with the noncentral t distribution); ``None`` when it cannot be told
    (fewer than 2 seeds or no spread)."""
    from scipy import optimize, stats

    if n < 2 or not sd > 0:
        return None
    df, critical = n - 1, stats.t.ppf(1 - alpha / 2, n - 1)

    def shortfall(delta: float) -> float:
        shift = delta * math.sqrt(n) / sd
        reached = stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift)
        return float(reached - power)

    high = sd
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-12 * sd))
