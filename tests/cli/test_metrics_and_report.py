"""Metrics against scikit-learn, the run store."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest

from rxf.cli.loading import ConfigError
from rxf.cli.metrics import accuracy, macro_f1, mean_std
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
