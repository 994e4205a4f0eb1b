"""The results of ``rxf finetune``: per method the spread over seeds (mean ± SD, median,
worst seed), and per method vs ``standard`` the paired comparison of :mod:`rxf_runner.stats`.
There is no "best seed" column: the headline is the paired difference and its CI.

Example:
    >>> runs = [{"method": m, "seed": s, "accuracy": a, "macro_f1": a, "wall_seconds": 2.0,
    ...          "seconds_per_step": 0.5}
    ...         for m, accs in (("standard", [0.8, 0.9]), ("r3f", [0.85, 0.95]))
    ...         for s, a in enumerate(accs)]
    >>> summarize(runs, ["standard", "r3f"])[1]["accuracy_worst"]
    0.85
    >>> comparisons(runs, ["standard", "r3f"])[0]["verdict"]
    'r3f ahead of standard'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rxf_runner import stats

BASELINE = "standard"
METRICS = ("accuracy", "macro_f1")
TIMES = ("wall_seconds", "seconds_per_step")


def summarize(runs: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method with finished runs: ``runs``, ``seeds``; for accuracy and
    macro_f1 their ``_mean``, ``_sd`` (sample SD), ``_median``, ``_worst`` and
    ``_worst_seed``; for the times their ``_mean`` and ``_sd``."""
    rows = []
    for method in methods:
        mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        if not mine:
            continue
        seeds = [r["seed"] for r in mine]
        row: dict[str, Any] = {"method": method, "runs": len(mine), "seeds": seeds}
        for column in (*METRICS, *TIMES):
            spread = stats.describe([float(r[column]) for r in mine], seeds)
            keys = (
                ("mean", "sd", "median", "worst", "worst_seed")
                if column in METRICS
                else ("mean", "sd")
            )
            row.update({f"{column}_{k}": spread[k] for k in keys})
        rows.append(row)
    return rows


def comparisons(
    runs: Sequence[dict[str, Any]], methods: Sequence[str], metric: str = "accuracy"
) -> list[dict[str, Any]]:
    """Per method other than ``standard``: :func:`rxf_runner.stats.compare` of ``metric`` over
    the seeds both have finished (empty when ``standard`` is not among the methods)."""
    by_key = {(r["method"], r["seed"]): float(r[metric]) for r in runs}
    out = []
    for method in methods:
        if method == BASELINE or BASELINE not in methods:
            continue
        seeds = sorted(s for m, s in by_key if m == method and (BASELINE, s) in by_key)
        if not seeds:
            continue
        row = stats.compare(
            [by_key[(method, s)] for s in seeds], [by_key[(BASELINE, s)] for s in seeds], method
        )
        row.update(seeds=seeds, metric=metric)
        out.append(row)
    return out


def _points(value: float | None, sign: bool = True) -> str:
    return "—" if value is None else f"{100 * value:+.1f}" if sign else f"{100 * value:.1f}"


def markdown(rows: Sequence[dict[str, Any]], paired: Sequence[dict[str, Any]] = ()) -> str:
    """The two Markdown tables: spread per method (metrics in %), then the paired
    comparisons vs ``standard`` (differences in accuracy points)."""
    lines = [
        "| method | seeds | accuracy (%) | median | worst (seed) | macro-F1 (%) "
        "| wall time / run (s) | time / step (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['runs']} "
            f"| {100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_sd']:.1f} "
            f"| {100 * r['accuracy_median']:.1f} "
            f"| {100 * r['accuracy_worst']:.1f} ({r['accuracy_worst_seed']}) "
            f"| {100 * r['macro_f1_mean']:.1f} ± {100 * r['macro_f1_sd']:.1f} "
            f"| {r['wall_seconds_mean']:.1f} ± {r['wall_seconds_sd']:.1f} "
            f"| {1000 * r['seconds_per_step_mean']:.0f} ± {1000 * r['seconds_per_step_sd']:.0f} |"
        )
    if paired:
        lines += [
            "",
            f"Paired by seed, vs {BASELINE} (accuracy points; {stats.CONFIDENCE:.0%} "
            f"percentile-bootstrap CI of the mean difference):",
            "",
            "| method | paired seeds | mean Δ | 95% CI | Wilcoxon p | detectable Δ | verdict |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for c in paired:
            ci = (
                "—" if c["ci_low"] is None else f"[{_points(c['ci_low'])}, {_points(c['ci_high'])}]"
            )
            p = "—" if c["wilcoxon_p"] is None else f"{c['wilcoxon_p']:.2g}"
            lines.append(
                f"| {c['method']} | {c['n']} | {_points(c['mean_difference'])} | {ci} | {p} "
                f"| {_points(c['detectable'], sign=False)} | {c['verdict']} |"
            )
    return "\n".join(lines) + "\n"


NOTES = (
    "Mean ± sample SD, median and worst seed over seeds (no best-seed column). Δ = method − "
    "standard on the same seed (same head initialisation, training subset and example "
    "order); the verdict follows the CI: ahead when it lies above 0, behind when below, "
    "otherwise not separated. Wilcoxon: two-sided signed-rank test (zeros dropped). "
    "Detectable Δ: the true mean difference a paired t-test at α = 0.05 would detect with "
    "80% power, given the spread of the differences seen here. Wall time covers a whole run "
    "(model load, training, evaluations); time / step only the optimiser steps."
)


def write(
    folder: Path,
    rows: Sequence[dict[str, Any]],
    paired: Sequence[dict[str, Any]],
    runs: Sequence[dict[str, Any]],
    about: dict[str, Any],
    complete: bool,
) -> tuple[Path, Path]:
    """Write ``results.md`` and ``results.json`` into ``folder``."""
    status = "" if complete else "\n**Partial: the command was interrupted; rerun it to finish.**\n"
    facts = "\n".join(f"- {k}: {v}" for k, v in about.items() if not isinstance(v, dict))
    text = f"# rxf finetune results\n{status}\n{facts}\n\n{markdown(rows, paired)}\n{NOTES}\n"
    md, js = folder / "results.md", folder / "results.json"
    md.write_text(text)
    data = {"complete": complete, "about": about, "summary": list(rows), "paired": list(paired)}
    js.write_text(json.dumps({**data, "runs": list(runs)}, indent=2, default=str))
    return md, js
