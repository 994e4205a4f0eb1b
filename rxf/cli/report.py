"""The results table of ``rxf finetune``: mean ± std and best over seeds, per method.

Example:
    >>> runs = [{"method": "r3f", "seed": s, "accuracy": a, "macro_f1": a, "wall_seconds": 2.0,
    ...          "seconds_per_step": 0.5} for s, a in enumerate([0.8, 0.9])]
    >>> summarize(runs, ["r3f"])[0]["accuracy_best"]
    0.9
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rxf.cli.metrics import mean_std

_COLUMNS = ("accuracy", "macro_f1", "wall_seconds", "seconds_per_step")


def summarize(runs: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method that has finished runs: ``runs``, ``seeds``, and for each of
    accuracy, macro_f1, wall_seconds, seconds_per_step its ``_mean``, ``_std`` (sample
    standard deviation over seeds) and ``_best`` (max for metrics, min for times)."""
    rows = []
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        row: dict[str, Any] = {
            "method": method,
            "runs": len(mine),
            "seeds": sorted(r["seed"] for r in mine),
        }
        for column in _COLUMNS:
            values = [float(r[column]) for r in mine]
            row[f"{column}_mean"], row[f"{column}_std"] = mean_std(values)
            row[f"{column}_best"] = min(values) if "seconds" in column else max(values)
        rows.append(row)
    return rows


def markdown(rows: Sequence[dict[str, Any]], heading: str = "") -> str:
    """A Markdown table of :func:`summarize`'s rows (metrics in %)."""
    lines = [heading, ""] if heading else []
    lines += [
        "| method | runs | accuracy (%) | best acc. | macro-F1 (%) | best F1 "
        "| wall time / run (s) | time / step (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['runs']} "
            f"| {100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f} "
            f"| {100 * r['accuracy_best']:.1f} "
            f"| {100 * r['macro_f1_mean']:.1f} ± {100 * r['macro_f1_std']:.1f} "
            f"| {100 * r['macro_f1_best']:.1f} "
            f"| {r['wall_seconds_mean']:.1f} ± {r['wall_seconds_std']:.1f} "
            f"| {1000 * r['seconds_per_step_mean']:.0f} ± {1000 * r['seconds_per_step_std']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write(
    folder: Path,
    rows: Sequence[dict[str, Any]],
    runs: Sequence[dict[str, Any]],
    about: dict[str, Any],
    complete: bool,
) -> tuple[Path, Path]:
    """Write ``results.md`` and ``results.json`` into ``folder``."""
    status = "" if complete else "\n**Partial: the command was interrupted; rerun it to finish.**\n"
    facts = "\n".join(f"- {k}: {v}" for k, v in about.items() if not isinstance(v, dict))
    text = (
        f"# rxf finetune results\n{status}\n{facts}\n\n{markdown(rows)}\n"
        "Mean ± sample standard deviation over seeds; best = highest metric / lowest time. "
        "Wall time covers a whole run (model load, training, evaluations); time / step "
        "only the optimiser steps.\n"
    )
    md, js = folder / "results.md", folder / "results.json"
    md.write_text(text)
    js.write_text(
        json.dumps(
            {"complete": complete, "about": about, "summary": list(rows), "runs": list(runs)},
            indent=2,
            default=str,
        )
    )
    return md, js
