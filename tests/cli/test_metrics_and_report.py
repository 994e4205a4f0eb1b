"""Metrics against scikit-learn, the summary table against hand computation, the run store."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest

from rxf.cli.loading import ConfigError
from rxf.cli.metrics import accuracy, macro_f1, mean_std
from rxf.cli.report import markdown, summarize
from rxf.cli.store import RunStore


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_scikit_learn(seed: int) -> None:
    from sklearn.metrics import accuracy_score, f1_score

    rng = random.Random(seed)
    classes = rng.randint(2, 6)
    labels = [rng.randrange(classes) for _ in range(40)]
    predicted = [y if rng.random() < 0.6 else rng.randrange(classes) for y in labels]
    assert accuracy(labels, predicted) == pytest.approx(accuracy_score(labels, predicted))
    expected = f1_score(
        labels, predicted, average="macro", labels=list(range(classes)), zero_division=0
    )
    assert macro_f1(labels, predicted, classes) == pytest.approx(expected)


def test_metric_input_checks_and_spread() -> None:
    with pytest.raises(ValueError, match="equal length"):
        accuracy([0, 1], [0])
    assert mean_std([3.0]) == (3.0, 0.0)
    values = [0.2, 0.5, 0.9]
    assert mean_std(values) == pytest.approx((statistics.mean(values), statistics.stdev(values)))


def test_summary_rows_and_markdown() -> None:
    runs = [
        {
            "method": m,
            "seed": s,
            "accuracy": a,
            "macro_f1": f,
            "wall_seconds": w,
            "seconds_per_step": t,
        }
        for m, s, a, f, w, t in [
            ("standard", 0, 0.8, 0.7, 10.0, 0.5),
            ("standard", 1, 0.9, 0.6, 12.0, 0.4),
            ("r3f", 0, 0.85, 0.8, 20.0, 1.0),
        ]
    ]
    rows = summarize(runs, ["standard", "r4f", "r3f"])
    assert [r["method"] for r in rows] == ["standard", "r3f"]  # r4f has no runs yet
    std = rows[0]
    assert std["runs"] == 2 and std["seeds"] == [0, 1]
    assert std["accuracy_mean"] == pytest.approx(0.85)
    assert std["accuracy_std"] == pytest.approx(statistics.stdev([0.8, 0.9]))
    assert std["accuracy_best"] == 0.9 and std["macro_f1_best"] == 0.7
    assert std["wall_seconds_best"] == 10.0 and std["seconds_per_step_best"] == 0.4  # fastest
    table = markdown(rows)
    assert (
        "| standard | 2 | 85.0 ± 7.1 | 90.0 | 65.0 ± 7.1 | 70.0 | 11.0 ± 1.4 | 450 ± 71 |" in table
    )
    assert "| r3f | 1 | 85.0 ± 0.0 | 85.0 | 80.0 ± 0.0 | 80.0 | 20.0 ± 0.0 | 1000 ± 0 |" in table


def test_store_saves_atomically_and_guards_the_settings(tmp_path: Path) -> None:
    store = RunStore(tmp_path, {"train": {"lr": 0.1}, "model": {"name": "m"}})
    store.check(restart=False)
    assert store.load("r3f", 0) is None
    store.save("r3f", 0, {"accuracy": 0.5})
    assert store.load("r3f", 0) == {"accuracy": 0.5}
    assert not list(tmp_path.rglob("*.tmp"))
    store.path("r4f", 0).write_text('{"accuracy": 0.')  # a torn file counts as not done
    assert store.load("r4f", 0) is None

    RunStore(tmp_path, {"train": {"lr": 0.1}, "model": {"name": "m"}}).check(restart=False)
    other = RunStore(tmp_path, {"train": {"lr": 0.2}, "model": {"name": "m"}})
    with pytest.raises(ConfigError, match=r"changed: train\.lr\)"):
        other.check(restart=False)
    other.check(restart=True)
    assert other.load("r3f", 0) is None
    assert json.loads((tmp_path / "run-config.json").read_text())["train"]["lr"] == 0.2
