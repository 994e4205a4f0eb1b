"""``rxf probe``: the representational-collapse protocol of Aghajanyan et al. (2020), small.

For each method and seed: fine-tune on a source task, freeze the encoder, fit a logistic
regression on its mean-pooled features for each probe task, and report the probe
accuracies (higher = less collapse). Chained variant: fine-tune source -> second task with
the same method, then probe the source task. A ``pretrained`` row probes the model before
any fine-tuning.

Example:
    >>> from rxf_runner.config import ProbeConfig
    >>> rows = run(ProbeConfig.model_validate({"seeds": 1}))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

import numpy as np
import torch

import rxf
from rxf_runner import data, models, train
from rxf_runner.config import ProbeConfig
from rxf_runner.data import Examples
from rxf_runner.stats import describe
from rxf_runner.store import RunStore, software, source_key

Split = tuple[Examples, Examples]


def run(
    cfg: ProbeConfig, *, restart: bool = False, progress: bool = True, out: TextIO | None = None
) -> list[dict[str, Any]]:
    """Run the protocol for every method and seed; write ``probe.md`` / ``probe.json``."""
    out = out or sys.stdout
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    source = data.split(cfg.source.data)
    second = data.split(cfg.second.data) if cfg.second is not None else None
    probes = {task.name: data.split(task.data) for task in cfg.probes}
    store = RunStore(cfg.output, fingerprint(cfg))
    for note in store.check(restart):
        print(f"note: {note}", file=out)
    results = []
    rows = [("pretrained", None)] + [(m, s) for s in cfg.seeds for m in cfg.methods]
    for i, (method, seed) in enumerate(rows, 1):
        key = (method, -1 if seed is None else seed)
        saved = store.load(*key)
        if saved is None:
            saved = _one(cfg, method, seed, source, second, probes, progress)
            store.save(*key, saved)
        results.append(saved)
        print(
            f"[{i}/{len(rows)}] {method}"
            + ("" if seed is None else f" seed {seed}")
            + ": "
            + ", ".join(f"{k} {100 * v:.1f}%" for k, v in saved["scores"].items()),
            file=out,
        )
    summary = summarize(results, ["pretrained", *cfg.methods])
    text = markdown(summary, cfg)
    (cfg.output / "probe.md").write_text(text)
    (cfg.output / "probe.json").write_text(
        json.dumps(
            {"summary": summary, "runs": results, "config": cfg.model_dump(mode="json")}, indent=2
        )
    )
    print("\n" + text, file=out)
    print(f"wrote {cfg.output / 'probe.md'}, {cfg.output / 'probe.json'}", file=out)
    return summary


def fingerprint(cfg: ProbeConfig) -> dict[str, Any]:
    """Everything a probe run depends on: the settings, the content of every task's data
    and of the model, the library versions."""
    from rxf_runner.finetune import BUILTIN_SOURCES

    dump = cfg.model_dump(mode="json", exclude={"methods", "seeds", "output"})
    tasks = [cfg.source, cfg.second, *cfg.probes]
    dump["content"] = {
        "model": source_key(cfg.model.name, BUILTIN_SOURCES),
        **{t.name: source_key(t.data.dataset, BUILTIN_SOURCES) for t in tasks if t is not None},
    }
    dump["software"] = software()
    return dump


def _one(
    cfg: ProbeConfig,
    method: str,
    seed: int | None,
    source: Split,
    second: Split | None,
    probes: dict[str, Split],
    progress: bool,
) -> dict[str, Any]:
    scores: dict[str, float] = {}
    n_source = len(source[0].label_names)
    if seed is None:  # the pretrained encoder, no fine-tuning
        train.seed_everything(0)
        task = models.build(cfg.model, n_source)
        encoder = task.module.to(train.accelerator_for(cfg.train).device)
    else:
        task, module = train.prepare(cfg.model, n_source, method, seed, cfg.rxf, cfg.per_method)
        fitted = train.fit(
            task,
            module,
            *source,
            cfg.train,
            method=method,
            seed=seed,
            progress=progress,
            label=f"{method} seed {seed}: {cfg.source.name}",
        )
        scores[f"source {cfg.source.name}"] = fitted.accuracy
        encoder = _plain(module)
    for name, split in probes.items():
        scores[f"probe {name}"] = probe_accuracy(task, encoder, *split, cfg.train.eval_batch_size)
    if cfg.second is not None and second is not None:
        scores.update(_chained(cfg, method, seed, task, encoder, source, second, progress))
    return {"method": method, "seed": seed, "scores": scores}


def _chained(
    cfg: ProbeConfig,
    method: str,
    seed: int | None,
    task: models.TaskModel,
    encoder: torch.nn.Module,
    source: Split,
    second: Split,
    progress: bool,
) -> dict[str, float]:
    assert cfg.second is not None
    if seed is None:
        return {}
    n_second = len(second[0].label_names)
    next_task, module = train.prepare(cfg.model, n_second, method, seed, cfg.rxf, cfg.per_method)
    inner = module.module if isinstance(module, rxf.RXFModel) else module  # keep R4F on
    models.transfer_encoder(encoder, inner)
    fitted = train.fit(
        next_task,
        module,
        *second,
        cfg.train,
        method=method,
        seed=seed,
        progress=progress,
        label=f"{method} seed {seed}: {cfg.second.name}",
    )
    after = probe_accuracy(next_task, _plain(module), *source, cfg.train.eval_batch_size)
    return {
        f"chained {cfg.second.name}": fitted.accuracy,
        f"chained probe {cfg.source.name}": after,
    }


def _plain(module: torch.nn.Module) -> torch.nn.Module:
    return rxf.unwrap(module) if isinstance(module, rxf.RXFModel) else module


@torch.no_grad()
def features(
    task: models.TaskModel, module: torch.nn.Module, examples: Examples, batch_size: int
) -> np.ndarray:
    """Mean-pooled encoder features of ``examples`` (eval mode, no gradients)."""
    module.eval()
    device = next(module.parameters()).device
    parts = []
    for first in range(0, len(examples), batch_size):
        batch = {
            k: v.to(device)
            for k, v in task.encode(examples.items[first : first + batch_size]).items()
        }
        parts.append(task.features(module, batch).float().cpu().numpy())
    return np.concatenate(parts)


def probe_accuracy(
    task: models.TaskModel,
    module: torch.nn.Module,
    train_set: Examples,
    eval_set: Examples,
    batch_size: int,
) -> float:
    """Accuracy of a logistic regression fit on frozen features of ``train_set``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(features(task, module, train_set, batch_size), train_set.labels)
    predicted = probe.predict(features(task, module, eval_set, batch_size))
    return float(accuracy_score(eval_set.labels, predicted))


def summarize(results: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """Per method and score: mean, sample std and count over seeds."""
    rows = []
    for method in methods:
        mine = [r["scores"] for r in results if r["method"] == method]
        if not mine:
            continue
        row: dict[str, Any] = {"method": method, "runs": len(mine), "scores": {}}
        for name in mine[0]:
            spread = describe([s[name] for s in mine], list(range(len(mine))))
            row["scores"][name] = {"mean": spread["mean"], "std": spread["sd"]}
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], cfg: ProbeConfig) -> str:
    """The probe table: one row per method, one column per score (accuracy in %)."""
    names = list(dict.fromkeys(n for r in rows for n in r["scores"]))
    lines = [
        "# rxf probe: representational collapse",
        "",
        f"Model {cfg.model.name}; fine-tuned on {cfg.source.name}; linear probes (logistic "
        f"regression on frozen mean-pooled features). Accuracy in %, mean ± std over "
        f"seeds {cfg.seeds}; 'pretrained' = no fine-tuning.",
        "",
        "| method | runs | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for r in rows:
        cells = [
            f"{100 * r['scores'][n]['mean']:.1f} ± {100 * r['scores'][n]['std']:.1f}"
            if n in r["scores"]
            else "—"
            for n in names
        ]
        lines.append(f"| {r['method']} | {r['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
