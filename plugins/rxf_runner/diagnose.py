"""``rxf diagnose``: what the consistency term is made of on the config's model and data.

The model as ``rxf finetune`` starts it (pretrained encoder, a new head initialised with the
first seed) and the first training batches in that seed's order go to :func:`rxf.diagnose`;
the table is printed and ``diagnosis.md``, ``diagnosis.json`` and ``diagnosis.png`` are
written to the output folder.

Example:
    >>> from rxf_runner.config import FinetuneConfig
    >>> result = run(FinetuneConfig())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

import torch

import rxf
from rxf_runner import data, models, train
from rxf_runner.config import FinetuneConfig


def batches_of(
    cfg: FinetuneConfig, task: models.TaskModel
) -> tuple[list[dict[str, torch.Tensor]], list[torch.Tensor]]:
    """The first ``diagnose.batches`` training batches in the first seed's order, encoded."""
    train_set, _ = data.split(cfg.data)
    seed, size = cfg.seeds[0], cfg.diagnose.batch_size or cfg.train.batch_size
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed)).tolist()
    device = train.accelerator_for(cfg.train).device
    inputs, labels = [], []
    for first in range(0, min(len(order), cfg.diagnose.batches * size), size):
        part = train_set.subset(order[first : first + size])
        inputs.append({k: v.to(device) for k, v in task.encode(part.items).items()})
        labels.append(torch.tensor(part.labels, device=device))
    return inputs, labels


def run(cfg: FinetuneConfig, *, plots: bool = True, out: TextIO | None = None) -> Any:
    """Diagnose the config's model on its data; print the table; write the files."""
    out = out or sys.stdout
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    num_labels = len(data.split(cfg.data)[0].label_names)
    train.seed_everything(cfg.seeds[0])
    task = models.build(cfg.model, num_labels)
    module = task.module.to(train.accelerator_for(cfg.train).device)
    inputs, labels = batches_of(cfg, task)
    settings = cfg.diagnose
    result = rxf.diagnose(
        module,
        inputs,
        labels,
        cfg.rxf,
        eps_grid=settings.eps_grid,
        draws=settings.draws,
        seed=settings.seed,
        noise_share=settings.noise_share,
        max_loss_change=settings.max_loss_change,
    )
    heading = (
        f"rxf diagnose: {cfg.model.name} on {cfg.data.dataset}, {len(inputs)} training "
        f"batch(es) of {len(labels[0])}, {settings.draws} draw(s) each, fresh head (seed "
        f"{cfg.seeds[0]}); {result.seconds:.1f} s"
    )
    text = f"{heading}\n\n{result}\n"
    print(text, file=out)
    cfg.output.mkdir(parents=True, exist_ok=True)
    written = [cfg.output / "diagnosis.md", cfg.output / "diagnosis.json"]
    written[0].write_text(f"# {text}")
    written[1].write_text(json.dumps(result.to_dict(), indent=2))
    if plots:
        written.append(result.plot(cfg.output / "diagnosis.png"))
    print(f"wrote {', '.join(str(p) for p in written)}", file=out)
    return result
