"""The training loop's pieces, checked in the loop itself: the learning rate the optimiser
uses at each step (warm-up and decay, written out by hand), the weight-decay groups, the
gradient clipping, and gradient accumulation equal to one big batch."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from rxf_runner import train
from rxf_runner.config import ModelSettings, TrainSettings
from rxf_runner.data import Examples
from torch import nn

from tests.runner.conftest import sentences


@pytest.fixture(scope="module")
def no_dropout_bert(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_bert without dropout: runs are deterministic whatever the batch layout."""
    import json

    folder = tmp_path_factory.mktemp("bert-no-dropout")
    shutil.copytree(tiny_bert, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _data() -> Examples:
    rows = sentences(4)  # 12 examples, 3 classes
    names = ["neg", "neu", "pos"]
    return Examples([t for t, _ in rows], [names.index(y) for _, y in rows], names)


def _spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Capture the optimiser fit builds, and at each real step its learning rate and the
    total gradient norm the step sees."""
    seen: dict[str, Any] = {"lrs": [], "norms": []}
    build = train.build_optimizer

    def spied(module: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
        optimizer = build(module, settings)
        seen["optimizer"], seen["module"] = optimizer, module

        def before_step(opt: Any, args: Any, kwargs: Any) -> None:
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            seen["norms"].append(
                float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
            )
            seen["lrs"].append([g["lr"] for g in opt.param_groups])

        optimizer.register_step_pre_hook(before_step)
        return optimizer

    monkeypatch.setattr(train, "build_optimizer", spied)
    return seen


def _fit(folder: Path, settings: TrainSettings, method: str = "standard") -> train.RunResult:
    data = _data()
    task, module = train.prepare(
        ModelSettings(name=str(folder), max_length=16),
        3,
        method,
        0,
        __import__("rxf").RXFConfig(eps=0.1),
    )
    return train.fit(task, module, data, data, settings, seed=0, progress=False, method=method)


def _hand_schedule(kind: str, peak: float, total: int, warmup: int) -> list[float]:
    out = []
    for step in range(total):
        if step < warmup:
            out.append(peak * step / warmup)
            continue
        progress = (step - warmup) / (total - warmup)
        factor = {"linear": 1 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress))}
        out.append(peak * factor.get(kind, 1.0))
    return out


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_learning_rate_at_every_step_has_the_warm_up_and_decay(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    seen = _spy(monkeypatch)
    settings = TrainSettings(
        epochs=4, batch_size=4, lr=1e-3, warmup_ratio=0.25, schedule=kind, eval_every=4
    )
    result = _fit(tiny_bert, settings)
    total = 4 * 3
    expected = _hand_schedule(kind, 1e-3, total, warmup=3)
    used = [lrs[0] for lrs in seen["lrs"]]
    assert used == pytest.approx(expected, abs=1e-12)
    assert all(len(set(lrs)) == 1 for lrs in seen["lrs"])  # both groups follow the schedule
    assert result.lrs == pytest.approx(expected, abs=1e-12)
    assert used[0] == 0 and used[1] == pytest.approx(1e-3 / 3)  # the warm-up is there


def test_weight_decay_groups(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _spy(monkeypatch)
    _fit(tiny_bert, TrainSettings(epochs=1, batch_size=12, weight_decay=0.05, eval_every=1))
    module = seen["module"]
    norms = {
        f"{name}.{p}" if name else p
        for name, m in module.named_modules()
        if isinstance(m, nn.LayerNorm)
        for p, _ in m.named_parameters(recurse=False)
    }
    decay_of = {
        id(p): g["weight_decay"] for g in seen["optimizer"].param_groups for p in g["params"]
    }
    names = dict(module.named_parameters())
    assert len(decay_of) == len(names)  # every parameter is optimised, once
    for name, param in names.items():
        plain = name.endswith("bias") or name in norms
        assert decay_of[id(param)] == (0.0 if plain else 0.05), name
    assert any(decay_of[id(p)] == 0.05 for n, p in names.items() if "classifier" in n)


def test_gradients_are_clipped_before_each_step(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _spy(monkeypatch)
    _fit(tiny_bert, TrainSettings(epochs=2, batch_size=4, max_grad_norm=1e-3, eval_every=2), "r3f")
    assert len(seen["norms"]) == 6 and max(seen["norms"]) <= 1e-3 * (1 + 1e-4)
    seen = _spy(monkeypatch)
    _fit(tiny_bert, TrainSettings(epochs=2, batch_size=4, max_grad_norm=None, eval_every=2), "r3f")
    assert min(seen["norms"]) > 1e-2  # unclipped norms are far larger: the check has teeth


def test_accumulation_equals_one_big_batch(no_dropout_bert: Path) -> None:
    one = _fit(no_dropout_bert, TrainSettings(epochs=2, batch_size=6, eval_every=2))
    two = _fit(
        no_dropout_bert, TrainSettings(epochs=2, batch_size=6, eval_every=2, accumulation_steps=2)
    )
    assert two.steps == one.steps == 4
    assert two.losses == pytest.approx(one.losses, rel=1e-5)
    assert two.lrs == one.lrs and two.accuracy == one.accuracy
