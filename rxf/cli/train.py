"""One fine-tuning run of the CLI: a method, a seed, AdamW with warm-up, periodic evaluation.

Example:
    >>> from rxf.cli.config import FinetuneConfig
    >>> cfg = FinetuneConfig()
    >>> train, test = data.split(cfg.data)  # doctest: +SKIP
    >>> result, model = fit(cfg.model, train, test, "r3f", 0, cfg.train, cfg.rxf)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

import rxf
from rxf.cli import models
from rxf.cli.config import ModelSettings, TrainSettings
from rxf.cli.data import Examples
from rxf.cli.metrics import accuracy, macro_f1


@dataclass
class RunResult:
    """What one (method, seed) run measured; ``curve`` holds the periodic evaluations."""

    method: str
    seed: int
    accuracy: float
    macro_f1: float
    steps: int
    train_seconds: float
    wall_seconds: float
    seconds_per_step: float  # optimiser steps only (forward, backward, update)
    curve: list[dict[str, float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    consistency: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's (when installed) and torch's generators."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy ships with torch wheels
        pass


METHODS: dict[str, dict[str, Any] | None] = {
    "standard": None,  # not wrapped
    "r3f": {},
    "r4f": {"spectral_norm_head": True},
    "rdrop": {"eps": 0.0},  # dropout consistency only (R-Drop)
    "r3f_shared_dropout": {"share_dropout_masks": True},  # the noise alone
}


def prepare(
    settings: ModelSettings,
    num_labels: int,
    method: str,
    seed: int,
    rxf_config: rxf.RXFConfig,
    device: str,
) -> tuple[models.TaskModel, nn.Module]:
    """A freshly initialised model for ``method``, wrapped by rxf with the method's
    settings (:data:`METHODS`) on top of ``rxf_config``; the head's initialisation depends
    on ``seed`` only, so every method starts from the same model for a seed."""
    seed_everything(seed)
    task = models.build(settings, num_labels)
    module = task.module.to(device)
    overrides = METHODS[method]
    if overrides is not None:
        module = rxf.wrap(module, rxf_config, **overrides)
    return task, module


def fit(
    task: models.TaskModel,
    module: nn.Module,
    train: Examples,
    held_out: Examples,
    settings: TrainSettings,
    *,
    label: str = "",
    progress: bool = True,
    method: str = "",
    seed: int = 0,
) -> RunResult:
    """Train ``module`` in place on ``train``; evaluate on ``held_out`` every
    ``eval_every`` epochs and at the end."""
    start = time.perf_counter()
    device = torch.device(settings.device)
    optimizer = _optimizer(module, settings)
    per_epoch = math.ceil(len(train) / settings.batch_size)
    total = per_epoch * settings.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(settings, total))
    order = torch.Generator().manual_seed(seed)
    result = RunResult(method, seed, 0.0, 0.0, total, 0.0, 0.0, 0.0)
    bar = _bar(total, label, progress)
    for epoch in range(1, settings.epochs + 1):
        module.train()
        permutation = torch.randperm(len(train), generator=order).tolist()
        for first in range(0, len(train), settings.batch_size):
            chosen = permutation[first : first + settings.batch_size]
            tic = time.perf_counter()
            loss, term = _step(task, module, train.subset(chosen), device)
            if settings.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(module.parameters(), settings.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            result.train_seconds += time.perf_counter() - tic
            result.losses.append(loss)
            result.consistency.append(term)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
        if epoch % settings.eval_every == 0 or epoch == settings.epochs:
            acc, f1 = evaluate(task, module, held_out, settings.eval_batch_size, device)
            result.curve.append(
                {"epoch": epoch, "step": epoch * per_epoch, "accuracy": acc, "macro_f1": f1}
            )
            bar.set_postfix(loss=f"{result.losses[-1]:.3f}", acc=f"{acc:.3f}")
    bar.close()
    result.accuracy, result.macro_f1 = result.curve[-1]["accuracy"], result.curve[-1]["macro_f1"]
    result.seconds_per_step = result.train_seconds / total
    result.wall_seconds = time.perf_counter() - start
    return result


def _step(
    task: models.TaskModel, module: nn.Module, batch: Examples, device: torch.device
) -> tuple[float, float]:
    inputs = {k: v.to(device) for k, v in task.encode(batch.items).items()}
    labels = torch.tensor(batch.labels, device=device)
    logits = models.logits_of(module(**inputs))
    loss = nn.functional.cross_entropy(logits.float(), labels)
    term = getattr(module, "consistency_loss", None) if isinstance(module, rxf.RXFModel) else None
    if term is not None:
        loss = loss + term
    loss.backward()
    return loss.item(), 0.0 if term is None else float(term.detach())


@torch.no_grad()
def evaluate(
    task: models.TaskModel,
    module: nn.Module,
    examples: Examples,
    batch_size: int,
    device: torch.device,
) -> tuple[float, float]:
    """(accuracy, macro-F1) of ``module`` on ``examples``, in eval mode."""
    module.eval()
    predictions: list[int] = []
    for first in range(0, len(examples), batch_size):
        part = examples.items[first : first + batch_size]
        inputs = {k: v.to(device) for k, v in task.encode(part).items()}
        predictions += models.logits_of(module(**inputs)).argmax(-1).tolist()
    return (
        accuracy(examples.labels, predictions),
        macro_f1(examples.labels, predictions, len(examples.label_names)),
    )


def _optimizer(module: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (plain if param.dim() <= 1 or name.endswith(".bias") else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=settings.lr)


def _schedule(settings: TrainSettings, total: int) -> Any:
    warmup = int(settings.warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if settings.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if settings.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def _bar(total: int, label: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=label, unit="step", disable=not enabled, leave=False, dynamic_ncols=True
    )
