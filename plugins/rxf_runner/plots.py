"""PNG plots of ``rxf finetune``: learning curves per method and the paired differences.

Example:
    >>> runs = [{"method": "standard", "seed": 0, "accuracy": 0.8, "macro_f1": 0.8,
    ...          "losses": [1.0, 0.5], "curve": [{"step": 2, "accuracy": 0.8}]}]
    >>> paths = plot_all(runs, ["standard"], Path(tempfile.mkdtemp()))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

_COLORS = {
    "standard": "#4c72b0",
    "r3f": "#dd8452",
    "r4f": "#55a868",
    "rdrop": "#c44e52",
    "r3f_shared_dropout": "#8172b3",
    "neftune": "#937860",
    "smart": "#da8bc3",
}


def plot_all(runs: Sequence[dict[str, Any]], methods: Sequence[str], folder: Path) -> list[Path]:
    """Write ``learning_curves.png`` (evaluation accuracy and training loss of every run);
    return its path. The spread over seeds is in :func:`paired_plot`."""
    plt = _pyplot()

    curves = folder / "learning_curves.png"
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        color = _COLORS.get(method)
        for i, run in enumerate(mine):
            steps = [p["step"] for p in run["curve"]]
            accs = [100 * p["accuracy"] for p in run["curve"]]
            ax_acc.plot(steps, accs, "o-", color=color, alpha=0.6, label=method if i == 0 else None)
            ax_loss.plot(
                range(1, len(run["losses"]) + 1),
                _smooth(run["losses"]),
                color=color,
                alpha=0.6,
                label=method if i == 0 else None,
            )
    ax_acc.set(xlabel="step", ylabel="eval accuracy (%)", title="Evaluation accuracy (each seed)")
    ax_loss.set(
        xlabel="step",
        ylabel="training loss (moving average)",
        title="Training loss incl. consistency term",
    )
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(curves, dpi=110)
    plt.close(fig)

    return [curves]


def _pyplot() -> Any:
    """Matplotlib's pyplot on the file-only Agg backend (typed loosely: its stubs vary)."""
    import matplotlib

    backend: Any = matplotlib
    backend.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _smooth(values: Sequence[float], window: int = 5) -> list[float]:
    parts = (values[max(0, i - window + 1) : i + 1] for i in range(len(values)))
    return [sum(part) / len(part) for part in parts]


def paired_plot(paired: Sequence[dict[str, Any]], folder: Path) -> Path:
    """Write ``paired_differences.png``: per method, each seed's difference to ``standard``
    (dots) and the mean with its bootstrap CI (bar), in accuracy points; return its path."""
    plt = _pyplot()

    path = folder / "paired_differences.png"
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(paired), 4))
    for x, row in enumerate(paired):
        diffs = [100 * d for d in row["differences"]]
        jitter = [x - 0.12 + 0.24 * i / max(1, len(diffs) - 1) for i in range(len(diffs))]
        ax.scatter(jitter, diffs, color=_COLORS.get(row["method"]), alpha=0.6, s=25)
        mean = 100 * row["mean_difference"]
        if row["ci_low"] is not None:
            err = [[mean - 100 * row["ci_low"]], [100 * row["ci_high"] - mean]]
            ax.errorbar([x + 0.3], [mean], yerr=err, fmt="o", color="black", capsize=5)
        else:
            ax.plot([x + 0.3], [mean], "o", color="black")
    ax.axhline(0, color="gray", lw=1)
    ax.set_xticks(range(len(paired)), [r["method"] for r in paired])
    ax.set(
        ylabel="accuracy − standard, same seed (points)",
        title="Paired differences (dots: seeds; bar: mean, 95% CI)",
    )
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
