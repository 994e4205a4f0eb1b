"""Paired statistics of ``rxf finetune`` against independent computations: numpy
resampling for the bootstrap CI, exact enumeration for the Wilcoxon p-value, simulation for
the detectable difference, and the verdict's wording."""

from __future__ import annotations

import itertools
import statistics

import numpy as np
import pytest
from rxf_runner.report import comparisons, markdown, summarize
from rxf_runner.stats import compare, describe, detectable_difference, verdict

METHOD = [0.905, 0.87, 0.915, 0.885, 0.9, 0.93, 0.86, 0.895]
BASE = [0.89, 0.875, 0.89, 0.88, 0.905, 0.9, 0.845, 0.88]


def test_describe_matches_statistics() -> None:
    values, seeds = [0.8, 0.95, 0.7, 0.9], [10, 11, 12, 13]
    d = describe(values, seeds)
    assert d["mean"] == pytest.approx(statistics.mean(values))
    assert d["sd"] == pytest.approx(np.std(values, ddof=1))
    assert d["median"] == pytest.approx(0.85)
    assert (d["worst"], d["worst_seed"], d["n"]) == (0.7, 12, 4)
    assert describe([0.5], [3])["sd"] == 0.0


def test_mean_difference_and_bootstrap_ci_match_numpy_resampling() -> None:
    row = compare(METHOD, BASE, "r3f")
    d = np.array(METHOD) - np.array(BASE)
    assert row["differences"] == pytest.approx(d.tolist())
    assert row["mean_difference"] == pytest.approx(d.mean())
    # percentile bootstrap by hand: resample the seeds with replacement, 95% of the means
    rng = np.random.default_rng(12345)
    means = d[rng.integers(0, len(d), size=(200_000, len(d)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    spread = high - low
    assert row["ci_low"] == pytest.approx(low, abs=0.03 * spread)
    assert row["ci_high"] == pytest.approx(high, abs=0.03 * spread)
    assert compare(METHOD, BASE, "r3f") == row  # seeded: the same CI every time


def _exact_wilcoxon(d: np.ndarray) -> float:
    """Two-sided exact signed-rank p by enumerating every sign assignment (no ties/zeros)."""
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    observed = ranks[d > 0].sum()
    totals = [
        sum(r for r, s in zip(ranks, signs, strict=True) if s)
        for signs in itertools.product([0, 1], repeat=len(d))
    ]
    below = np.mean([t <= observed for t in totals])
    above = np.mean([t >= observed for t in totals])
    return float(min(1.0, 2 * min(below, above)))


def test_wilcoxon_p_matches_exact_enumeration() -> None:
    rng = np.random.default_rng(0)
    for _ in range(3):
        base = rng.uniform(0.8, 0.9, 9)
        method = base + rng.normal(0.01, 0.02, 9)
        d = method - base
        assert compare(method.tolist(), base.tolist(), "m")["wilcoxon_p"] == pytest.approx(
            _exact_wilcoxon(d)
        )


def test_detectable_difference_has_80_percent_power_by_simulation() -> None:
    from scipy import stats

    sd, n = 0.02, 10
    delta = detectable_difference(sd, n)
    assert delta is not None and 0.5 * sd < delta < 2 * sd
    rng = np.random.default_rng(7)
    d = rng.normal(delta, sd, size=(40_000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / np.sqrt(n))
    power = np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1))
    assert power == pytest.approx(0.8, abs=0.01)
    assert detectable_difference(0.0, 5) is None and detectable_difference(0.1, 1) is None


@pytest.mark.parametrize(
    ("low", "high", "words"),
    [
        (0.001, 0.02, "r3f ahead of standard"),
        (-0.02, -0.001, "r3f behind standard"),
        (-0.01, 0.02, "r3f not separated from standard"),
        (0.0, 0.02, "r3f not separated from standard"),  # a CI touching 0 does not separate
        (-0.02, 0.0, "r3f not separated from standard"),
    ],
)
def test_verdict_follows_the_ci(low: float, high: float, words: str) -> None:
    assert verdict("r3f", low, high) == words


def test_degenerate_comparisons() -> None:
    one = compare([0.9], [0.8], "r4f")
    assert one["verdict"] == "r4f: one paired seed, no comparison" and one["ci_low"] is None
    same = compare([0.9, 0.8, 0.7], [0.9, 0.8, 0.7], "rdrop")
    assert (same["ci_low"], same["ci_high"], same["wilcoxon_p"]) == (0.0, 0.0, 1.0)
    assert same["verdict"] == "rdrop not separated from standard"
    shifted = compare([0.91, 0.81, 0.71], [0.9, 0.8, 0.7], "r3f")
    assert shifted["ci_low"] == shifted["ci_high"] == pytest.approx(0.01)
    assert shifted["verdict"] == "r3f ahead of standard"


def _runs() -> list[dict[str, object]]:
    rows = []
    for method, accs in (("r3f", METHOD[:5]), ("standard", BASE[:4]), ("rdrop", [0.9])):
        for seed, acc in enumerate(accs):
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "accuracy": acc,
                    "macro_f1": acc - 0.01,
                    "wall_seconds": 2.0 + seed,
                    "seconds_per_step": 0.5,
                }
            )
    return rows[::-1]  # any order


def test_comparisons_pair_by_seed() -> None:
    paired = comparisons(_runs(), ["standard", "r3f", "rdrop"])
    assert [p["method"] for p in paired] == ["r3f", "rdrop"]
    r3f = paired[0]
    assert r3f["seeds"] == [0, 1, 2, 3]  # seed 4 has no standard run: not paired
    assert r3f["mean_difference"] == pytest.approx(np.mean(np.subtract(METHOD[:4], BASE[:4])))
    assert comparisons(_runs(), ["r3f", "rdrop"]) == []  # no baseline, no comparison


def test_summary_and_tables() -> None:
    runs = _runs()
    rows = summarize(runs, ["standard", "r4f", "r3f"])
    assert [r["method"] for r in rows] == ["standard", "r3f"]  # r4f has no runs
    std = rows[0]
    assert std["seeds"] == [0, 1, 2, 3] and std["runs"] == 4
    assert std["accuracy_mean"] == pytest.approx(statistics.mean(BASE[:4]))
    assert std["accuracy_sd"] == pytest.approx(statistics.stdev(BASE[:4]))
    assert std["accuracy_median"] == pytest.approx(statistics.median(BASE[:4]))
    assert (std["accuracy_worst"], std["accuracy_worst_seed"]) == (0.875, 1)
    assert std["wall_seconds_mean"] == pytest.approx(3.5)
    assert not any("best" in key for key in std)  # no best-seed headline
    text = markdown(rows, comparisons(runs, ["standard", "r3f"]))
    assert (
        "| standard | 4 | 88.4 ± 0.8 | 88.5 | 87.5 (1) | 87.4 ± 0.8 | 3.5 ± 1.3 | 500 ± 0 |" in text
    )
    r3f = comparisons(runs, ["standard", "r3f"])[0]
    ci = f"[{100 * r3f['ci_low']:+.1f}, {100 * r3f['ci_high']:+.1f}]"
    assert f"| r3f | 4 | +1.0 | {ci} | {r3f['wilcoxon_p']:.2g} |" in text
    assert text.rstrip().endswith(f"| {r3f['verdict']} |")
