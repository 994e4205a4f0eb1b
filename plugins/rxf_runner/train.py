"""One fine-tuning run of the CLI: a method, a seed, AdamW with a transformers schedule,
through accelerate (device placement, mixed precision, gradient accumulation, DDP).

``batch_size`` is the number of examples per optimiser step whatever the layout: each step's
examples are split over the processes and the accumulation steps, so one process and
``accelerate launch`` on several give the same optimisation (up to the dropout / noise
draws of each shard).

Example:
    >>> from rxf_runner.config import FinetuneConfig
    >>> cfg = FinetuneConfig()
    >>> task, module = prepare(cfg.model, 5, "r3f", 0, cfg.rxf)  # doctest: +SKIP
    >>> result = fit(task, module, train_set, eval_set, cfg.train, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

import rxf
from rxf_runner import models
from rxf_runner.config import ModelSettings, TrainSettings, method_config
from rxf_runner.data import Examples
from rxf_runner.loading import ConfigError

NO_DECAY = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)


@dataclass
class RunResult:
    """What one (method, seed) run measured; ``curve`` holds the periodic evaluations,
    ``losses`` / ``consistency`` / ``lrs`` one value per optimiser step."""

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
    lrs: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (accelerate's ``set_seed``)."""
    from accelerate.utils import set_seed

    set_seed(seed)


@functools.lru_cache(maxsize=1)
def accelerator_for(settings: TrainSettings) -> Any:
    """The process's :class:`accelerate.Accelerator` for these settings, remade when they
    change (accelerate keeps one shared state per process, which the newest one sets)."""
    from accelerate import Accelerator

    try:
        return Accelerator(
            cpu=settings.device == "cpu",
            mixed_precision=settings.mixed_precision,
            gradient_accumulation_steps=settings.accumulation_steps,
        )
    except ValueError as exc:  # accelerate fixes the precision once per process
        raise ConfigError(f"train.mixed_precision: {exc}") from None


def prepare(
    settings: ModelSettings,
    num_labels: int,
    method: str,
    seed: int,
    rxf_config: rxf.RXFConfig,
    per_method: Mapping[Any, Mapping[str, Any]] | None = None,
) -> tuple[models.TaskModel, nn.Module]:
    """A freshly initialised model for ``method``, wrapped by rxf with the method's config
    (:func:`rxf_runner.config.method_config`: its preset, ``rxf_config``, ``per_method``);
    the head's initialisation depends on ``seed`` only, so every method starts from the
    same model for a seed."""
    seed_everything(seed)
    task = models.build(settings, num_labels)
    config = method_config(method, rxf_config, per_method or {})
    return task, task.module if config is None else rxf.wrap(task.module, config)


def build_optimizer(module: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW with weight decay on every parameter except biases and normalisation weights
    (transformers' ``get_parameter_names``, the grouping its ``Trainer`` uses)."""
    from transformers.trainer_pt_utils import get_parameter_names

    decayed = {n for n in get_parameter_names(module, list(NO_DECAY)) if not n.endswith("bias")}
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n in decayed], "weight_decay": settings.weight_decay},
        {"params": [p for n, p in named if n not in decayed], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=settings.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings, total: int) -> Any:
    """Transformers' schedule: linear warm-up over ``warmup_ratio`` of the steps, then
    linear / cosine decay to 0 or constant."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if settings.schedule == "constant" else settings.schedule
    warmup = math.ceil(settings.warmup_ratio * total)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)


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
    acc = accelerator_for(settings)
    shards = acc.num_processes * settings.accumulation_steps
    per_epoch = math.ceil(len(train) / settings.batch_size)
    total = per_epoch * settings.epochs
    optimizer = build_optimizer(module, settings)
    scheduler = build_scheduler(optimizer, settings, total)
    model, optimizer = acc.prepare(module, optimizer)
    order = torch.Generator().manual_seed(seed)
    result = RunResult(method, seed, 0.0, 0.0, total, 0.0, 0.0, 0.0)
    bar = _bar(total, label, progress and acc.is_main_process)
    for epoch in range(1, settings.epochs + 1):
        model.train()
        permutation = torch.randperm(len(train), generator=order).tolist()
        for first in range(0, len(train), settings.batch_size):
            parts = _split(permutation[first : first + settings.batch_size], shards)
            mine = parts[acc.process_index :: acc.num_processes]
            tic = time.perf_counter()
            result.lrs.append(scheduler.get_last_lr()[0])
            totals = torch.zeros(3, device=acc.device)  # loss·n, term·n, n over my shards
            for part in mine:
                with acc.accumulate(model):
                    loss, term = _loss(task, model, train.subset(part), acc)
                    acc.backward(loss)
                    if acc.sync_gradients and settings.max_grad_norm is not None:
                        acc.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                totals += torch.stack([loss.detach(), term, torch.ones_like(term)]) * len(part)
            scheduler.step()
            loss_sum, term_sum, count = acc.reduce(totals, "sum").tolist()
            loss_value, term_value = loss_sum / count, term_sum / count
            result.train_seconds += time.perf_counter() - tic
            result.losses.append(loss_value)
            result.consistency.append(term_value)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}")
        if epoch % settings.eval_every == 0 or epoch == settings.epochs:
            score, f1 = evaluate(task, model, held_out, settings.eval_batch_size, acc.device)
            result.curve.append(
                {"epoch": epoch, "step": epoch * per_epoch, "accuracy": score, "macro_f1": f1}
            )
            bar.set_postfix(loss=f"{result.losses[-1]:.3f}", acc=f"{score:.3f}")
    bar.close()
    result.accuracy, result.macro_f1 = result.curve[-1]["accuracy"], result.curve[-1]["macro_f1"]
    result.seconds_per_step = result.train_seconds / total
    result.wall_seconds = time.perf_counter() - start
    return result


def _split(indices: Sequence[int], parts: int) -> list[list[int]]:
    """``indices`` in ``parts`` contiguous, near-equal pieces (``parts`` must fit)."""
    if len(indices) < parts:
        raise ValueError(
            f"a batch of {len(indices)} examples cannot be split over {parts} processes × "
            f"accumulation steps; lower train.accumulation_steps or the process count, or "
            f"raise train.batch_size"
        )
    size, extra = divmod(len(indices), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [list(indices[bounds[i] : bounds[i + 1]]) for i in range(parts)]


def _loss(
    task: models.TaskModel, model: nn.Module, batch: Examples, acc: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = {k: v.to(acc.device) for k, v in task.encode(batch.items).items()}
    labels = torch.tensor(batch.labels, device=acc.device)
    logits = models.logits_of(model(**inputs))
    loss = nn.functional.cross_entropy(logits.float(), labels)
    inner = acc.unwrap_model(model)
    if isinstance(inner, rxf.RXFModel):
        if (second := inner.second_output) is not None:  # R-Drop: both passes' task loss
            second_loss = nn.functional.cross_entropy(models.logits_of(second).float(), labels)
            loss = (loss + second_loss) / 2
        term = inner.consistency_loss
        return loss + term, term.detach().float()
    return loss, torch.zeros((), device=acc.device)


@torch.no_grad()
def evaluate(
    task: models.TaskModel,
    module: nn.Module,
    examples: Examples,
    batch_size: int,
    device: torch.device,
) -> tuple[float, float]:
    """(accuracy, macro-F1) of ``module`` on ``examples`` in eval mode (scikit-learn)."""
    from sklearn.metrics import accuracy_score, f1_score

    module.eval()
    predictions: list[int] = []
    for first in range(0, len(examples), batch_size):
        part = examples.items[first : first + batch_size]
        inputs = {k: v.to(device) for k, v in task.encode(part).items()}
        predictions += models.logits_of(module(**inputs)).argmax(-1).tolist()
    labels = list(range(len(examples.label_names)))
    return (
        float(accuracy_score(examples.labels, predictions)),
        float(
            f1_score(examples.labels, predictions, labels=labels, average="macro", zero_division=0)
        ),
    )


def _bar(total: int, label: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=label, unit="step", disable=not enabled, leave=False, dynamic_ncols=True
    )
