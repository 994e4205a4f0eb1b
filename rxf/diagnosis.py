"""diagnose(): what the consistency term is made of, measured on a model and its data.

In training mode R3F's clean and noisy passes differ by the embedding noise *and* by their
dropout masks, so the term mixes two causes. :func:`diagnose` measures them apart:

- **noise only**: the model's modules in eval mode (no dropout; BatchNorm on running
  statistics), clean vs noisy pass at ``eps``;
- **dropout only**: training mode at ``eps = 0``;
- **both**: training mode at ``eps``, the term training sees;

at the configured ``eps`` and over a log-spaced sweep, each as the divergence and as
``λ · divergence / task loss``; with the noise-to-signal ratio at the embedding (measured
after the cast to its dtype), the dtype's precision floor there, and how much the noise
moves the clean task loss. Every number is a mean over batches × draws, each draw seeded
(``torch.manual_seed(seed + k)``) inside :func:`torch.random.fork_rng`, so the caller's RNG
state is untouched and a rerun gives the same numbers.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rxf.config import RXFConfig
from rxf.errors import RXFError, RXFPrecisionWarning
from rxf.explanation import explain
from rxf.inputs import ForwardInputs
from rxf.wrapper import RXFModel, wrap

DEFAULT_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
LossFn = Callable[[Any, Any], Tensor]


@dataclass(frozen=True)
class EpsRow:
    """Measurements at one ``eps`` (divergences and losses in nats, means over draws).

    ``loss_change`` is ``L_task(noisy) − L_task(clean)`` with dropout off.
    """

    eps: float
    noise_only: float
    both: float
    noise_to_signal: float
    loss_change: float


@dataclass(frozen=True)
class Diagnosis:
    """The result of :func:`diagnose`; ``str()`` is the table, see also :meth:`to_dict`."""

    config: RXFConfig
    rows: list[EpsRow]
    dropout_only: float
    task_loss: float  # clean pass, training mode: the denominator of the fractions
    eval_loss: float  # clean pass, dropout off: the baseline of loss_change
    embedding: str
    embedding_dtype: str
    embedding_rms: float
    precision_floor: float  # spacing of the embedding dtype at the embedding's RMS
    batches: int
    draws: int
    seconds: float
    noise_share: float
    max_loss_change: float
    notes: list[str] = field(default_factory=list)

    @property
    def at_config(self) -> EpsRow:
        """The row of the configured ``eps`` (the dropout-only row when ``eps = 0``)."""
        for row in self.rows:
            if row.eps == self.config.eps:
                return row
        return EpsRow(0.0, 0.0, self.dropout_only, 0.0, 0.0)

    def share(self, row: EpsRow) -> float:
        """The noise's share of the term at ``row.eps``: noise-only / both."""
        return row.noise_only / row.both if row.both > 0 else float("nan")

    def fraction(self, divergence: float) -> float:
        """``λ · divergence`` as a fraction of the task loss."""
        return self.config.r3f_lambda * divergence / self.task_loss

    def relative_change(self, row: EpsRow) -> float:
        """``|loss_change|`` as a fraction of the clean (dropout-off) task loss."""
        return abs(row.loss_change) / max(abs(self.eval_loss), 1e-30)

    def recommended(self) -> list[float]:
        """The swept eps values where the noise is at least ``noise_share`` of the term and
        the clean loss moves by at most ``max_loss_change`` (relative)."""
        return [
            r.eps
            for r in self.rows
            if self.share(r) >= self.noise_share and self.relative_change(r) <= self.max_loss_change
        ]

    def recommendation(self) -> str:
        """The recommendation in words, stated as what was measured."""
        cfg, here = self.config, self.at_config
        scope = f"measured on {self.batches} batch(es) × {self.draws} draw(s), not a rule"
        now = (
            f"At the configured eps={cfg.eps:g} the noise is {self.share(here):.2g} of the term "
            f"(noise only {here.noise_only:.2g} vs dropout only {self.dropout_only:.2g}); "
        )
        good = self.recommended()
        target = f"noise ≥ {self.noise_share:.0%} of the term, clean loss moved ≤ " + (
            f"{self.max_loss_change:.1%}"
        )
        if good:
            rows = [r for r in self.rows if r.eps in good]
            shares = [self.share(r) for r in rows]
            moved = max(self.relative_change(r) for r in rows)
            return (
                f"{now}eps {min(good):g} to {max(good):g} met the target ({target}): noise "
                f"share {min(shares):.0%} to {max(shares):.0%}, clean loss moved by at most "
                f"{moved:.2%} ({scope})."
            )
        return (
            f"{now}no swept eps met the target ({target}); see the table for the trade-off "
            f"({scope})."
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: every field, the per-row shares and fractions, the
        recommendation."""
        data = asdict(self)
        data["config"] = self.config.model_dump(mode="json")
        for row, out in zip(self.rows, data["rows"], strict=True):
            out["noise_share"] = self.share(row)
            out["noise_only_fraction"] = self.fraction(row.noise_only)
            out["both_fraction"] = self.fraction(row.both)
            out["loss_change_relative"] = self.relative_change(row)
        data["dropout_only_fraction"] = self.fraction(self.dropout_only)
        data["recommended_eps"] = self.recommended()
        data["recommendation"] = self.recommendation()
        return data

    def __str__(self) -> str:
        cfg = self.config
        lines = [
            f"embedding {self.embedding} ({self.embedding_dtype}, RMS {self.embedding_rms:.3g}; "
            f"precision floor there {self.precision_floor:.2g})",
            f"task loss {self.task_loss:.4g} (training mode), {self.eval_loss:.4g} (dropout "
            f"off); lambda={cfg.r3f_lambda:g}, {cfg.noise_type} noise, {cfg.divergence}",
            f"dropout only (eps=0): {self.dropout_only:.3g} "
            f"= {self.fraction(self.dropout_only):.3g} of the task loss",
            "",
            "| eps | noise only | × λ / task loss | both | × λ / task loss | noise share "
            "| noise/signal | Δ clean loss |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            mark = " *" if r.eps == cfg.eps else ""
            lines.append(
                f"| {r.eps:.0e}{mark} | {r.noise_only:.3g} | {self.fraction(r.noise_only):.2g} "
                f"| {r.both:.3g} | {self.fraction(r.both):.2g} | {self.share(r):.2g} "
                f"| {r.noise_to_signal:.2g} | {r.loss_change:+.2g} "
                f"({self.relative_change(r):.2%}) |"
            )
        lines += ["", "* configured eps", self.recommendation(), *self.notes]
        return "\n".join(lines)

    def plot(self, path: Any) -> Any:
        """Write the log-log plot of the term's parts (and |Δ clean loss|) against eps."""
        import matplotlib

        backend: Any = matplotlib
        backend.use("Agg", force=True)
        import matplotlib.pyplot as plt

        eps = [r.eps for r in self.rows]
        fig, axes = plt.subplots(figsize=(6.4, 4.4))
        ax: Any = axes
        ax.loglog(eps, [_positive(r.noise_only) for r in self.rows], "o-", label="noise only")
        ax.loglog(eps, [_positive(r.both) for r in self.rows], "s-", label="noise + dropout")
        ax.axhline(_positive(self.dropout_only), color="gray", ls="--", label="dropout only")
        ax.loglog(
            eps, [_positive(abs(r.loss_change)) for r in self.rows], "^:", label="|Δ clean loss|"
        )
        ax.axvline(self.config.eps or eps[0], color="black", lw=0.8, alpha=0.5)
        ax.set(xlabel="eps", ylabel="nats (mean over draws)", title="What the term is made of")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _positive(value: float) -> float:
    return value if value > 0 else float("nan")  # log axes: zero has no place


def diagnose(
    model: nn.Module,
    batch: Any,
    labels: Tensor | Sequence[Tensor] | None = None,
    config: RXFConfig | Mapping[str, Any] | None = None,
    *,
    loss_fn: LossFn | None = None,
    eps_grid: Sequence[float] | None = None,
    draws: int = 1,
    seed: int = 0,
    noise_share: float = 0.1,
    max_loss_change: float = 0.01,
    **overrides: Any,
) -> Diagnosis:
    """Measure what R3F's consistency term is made of on ``model`` and ``batch``.

    Args:
        model: the model (plain or returned by :func:`rxf.wrap`; then its config is the
            default). It is not changed; its modules' train/eval modes are restored.
        batch: one batch or a list of batches; a batch is a mapping of keyword arguments
            (``model(**batch)``) or a tensor (``model(batch)``).
        labels: the targets (a tensor per batch) when the model's output has no ``loss``;
            the task loss is then ``loss_fn(output, labels)``, by default cross-entropy on
            the logits (ignore index -100; MSE for one-output heads).
        config: the R3F settings (an :class:`RXFConfig` or a mapping); ``overrides`` replace
            fields. R4F is not applied: wrap the model with R4F first to diagnose its head.
        loss_fn: ``loss_fn(output, labels) -> scalar tensor``, the task loss.
        eps_grid: the swept eps values (default 1e-6 … 1e-1, one per decade); the
            configured eps is added.
        draws: seeded repetitions per batch.
        seed: the first seed; draw ``k`` runs under ``torch.manual_seed(seed + k)``.
        noise_share: the recommendation's target share of the term from the noise.
        max_loss_change: the recommendation's limit on ``|Δ clean loss| / clean loss``.
        **overrides: :class:`RXFConfig` fields, replacing those of ``config``.

    Shape:
        Whatever the model takes: each batch is passed as ``model(**batch)`` (mapping) or
        ``model(batch)`` (tensor); ``labels`` per batch as ``loss_fn`` expects them (default
        cross-entropy: ``(B,)`` class indices for ``(B, C)`` logits, ``(B, T)`` for
        ``(B, T, C)``). The divergence is rxf's own, reduced as in training (per example, or
        over the target positions of token-level logits); every number is a float in nats.

    Returns:
        A :class:`Diagnosis`; ``print`` it for the table, ``.to_dict()`` for JSON,
        ``.plot(path)`` for the log-log plot.

    Raises:
        RXFError: no task loss can be found, an eps is not positive, or the batch is empty.

    Example:
        >>> import rxf, torch
        >>> net = torch.nn.Sequential(
        ...     torch.nn.Embedding(10, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 3))
        >>> d = rxf.diagnose(net, torch.tensor([[1, 2], [3, 4]]), labels=torch.tensor(
        ...     [[0, 1], [2, 0]]), eps_grid=[1e-3, 1e-1])
        >>> [r.eps for r in d.rows]
        [1e-05, 0.001, 0.1]
    """
    start = time.perf_counter()
    inner = model.module if isinstance(model, RXFModel) else model
    base = model.rxf_config if isinstance(model, RXFModel) else RXFConfig()
    if config is not None:
        base = config if isinstance(config, RXFConfig) else RXFConfig.from_dict(config)
    # the measured quantity is R3F's random noise against dropout, whatever the wrapper runs
    # (R-Drop's eps=0, SMART's ascent): the noise settings are kept, the method is R3F's
    kept = {
        k: v
        for k, v in base.model_dump(exclude_unset=True).items()
        if k != "method" and not k.startswith("smart_")
    }
    cfg = RXFConfig.from_dict({**kept, **overrides, "spectral_norm_head": False})
    batches = _as_list(batch)
    targets = _targets(labels, len(batches))
    grid = sorted({float(e) for e in (eps_grid or DEFAULT_GRID)} | ({cfg.eps} - {0.0}))
    if not batches or grid[0] <= 0 or draws < 1:
        raise RXFError("diagnose needs a batch, positive eps values and draws >= 1")
    embedding_name = explain(inner, cfg).embedding
    embedding = inner.get_submodule(embedding_name)
    modes = {m: m.training for m in inner.modules()}
    sums: dict[str, float] = {}
    probe = _EmbeddingProbe()
    try:
        with (
            torch.no_grad(),
            torch.random.fork_rng(devices=_cuda_devices(inner)),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            # one noisy pass per eps (r3f_lambda=0: the wrapper's single noisy pass); the
            # clean passes are shared by every eps, and the divergence is the wrapper's own
            noisy = {
                e: wrap(inner, cfg.with_overrides(eps=e, r3f_lambda=0.0)) for e in [0.0, *grid]
            }
            k = 0
            for inputs, target in zip(batches, targets, strict=True):
                for _ in range(draws):
                    task = lambda out, t=target: _task_loss(out, t, loss_fn)  # noqa: E731
                    _measure(inner, embedding, inputs, task, seed + k, noisy, probe, sums)
                    k += 1
    finally:
        for module, training in modes.items():
            module.train(training)
    notes = [str(w.message) for w in caught if issubclass(w.category, RXFPrecisionWarning)]
    for w in caught:
        if not issubclass(w.category, RXFPrecisionWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    n = k
    rows = [
        EpsRow(
            e,
            sums[f"noise_only@{e}"] / n,
            sums[f"both@{e}"] / n,
            sums[f"nts@{e}"] / n,
            sums[f"change@{e}"] / n,
        )
        for e in grid
    ]
    rms = probe.rms_sum / max(probe.count, 1)
    dtype = probe.dtype or torch.float32
    return Diagnosis(
        config=cfg,
        rows=rows,
        dropout_only=sums["both@0.0"] / n,
        task_loss=sums["task"] / n,
        eval_loss=sums["eval"] / n,
        embedding=embedding_name,
        embedding_dtype=str(dtype).removeprefix("torch."),
        embedding_rms=rms,
        precision_floor=_spacing(rms, dtype),
        batches=len(batches),
        draws=draws,
        seconds=time.perf_counter() - start,
        noise_share=noise_share,
        max_loss_change=max_loss_change,
        notes=notes,
    )


def _measure(
    inner: nn.Module,
    embedding: nn.Module,
    inputs: Any,
    task: Callable[[Any], float],
    seed: int,
    noisy: dict[float, RXFModel],
    probe: _EmbeddingProbe,
    sums: dict[str, float],
) -> None:
    """Add one draw's measurements to ``sums``.

    The RNG sequence of each part is the one a two-pass training forward has: seed, clean
    pass (draws the dropout masks in training mode), noise, noisy pass. The state after the
    clean training pass is restored before each noisy pass, so every eps (and eps = 0) sees
    the same clean masks and the same noisy-pass masks: the parts differ by the noise only.
    """

    def add(key: str, value: float) -> None:
        sums[key] = sums.get(key, 0.0) + value

    def call(module: nn.Module) -> Any:
        return module(**inputs) if isinstance(inputs, Mapping) else module(inputs)

    def noisy_pass(model: RXFModel, dropout: bool) -> Any:
        model.train()
        if not dropout:
            model.module.eval()
        return call(model)

    forward_inputs = (
        ForwardInputs((), dict(inputs)) if isinstance(inputs, Mapping) else ForwardInputs((inputs,))
    )

    def divergence(model: RXFModel, clean: Any, other: Any) -> float:
        value, _, _ = model._divergence(
            forward_inputs, clean, model._logits(clean), model._logits(other)
        )
        return float(value)

    inner.train()
    torch.manual_seed(seed)
    clean_train = call(inner)
    after_clean = _rng_state(inner)
    add("task", task(clean_train))
    inner.eval()
    with probe.attached(embedding):
        clean_eval = call(inner)
    eval_loss = task(clean_eval)
    add("eval", eval_loss)
    for eps, model in noisy.items():
        _set_rng_state(after_clean)
        add(f"both@{eps}", divergence(model, clean_train, noisy_pass(model, dropout=True)))
        if eps == 0.0:
            continue
        torch.manual_seed(seed)  # eval mode: the clean pass draws nothing, the noise comes first
        output = noisy_pass(model, dropout=False)
        add(f"noise_only@{eps}", divergence(model, clean_eval, output))
        add(f"nts@{eps}", float(model.last_stats.get("noise_to_signal", float("nan"))))
        add(f"change@{eps}", task(output) - eval_loss)


def _rng_state(model: nn.Module) -> tuple[Tensor, list[tuple[int, Tensor]]]:
    cuda = [(d, torch.cuda.get_rng_state(d)) for d in _cuda_devices(model)]
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, list[tuple[int, Tensor]]]) -> None:
    torch.set_rng_state(state[0])
    for device, cuda_state in state[1]:
        torch.cuda.set_rng_state(cuda_state, device)


class _EmbeddingProbe:
    """Reads the embedding output's RMS and dtype during the clean, dropout-off pass."""

    def __init__(self) -> None:
        self.rms_sum, self.count = 0.0, 0
        self.dtype: torch.dtype | None = None

    def attached(self, module: nn.Module) -> Any:
        probe = self

        class _Scope:
            def __enter__(self) -> None:
                self.handle = module.register_forward_hook(self.hook)

            def hook(self, mod: nn.Module, args: Any, output: Any) -> None:
                value = output[0] if isinstance(output, tuple) else output
                if isinstance(value, Tensor) and value.is_floating_point():
                    probe.rms_sum += float(value.float().pow(2).mean().sqrt())
                    probe.count += 1
                    probe.dtype = value.dtype

            def __exit__(self, *exc: Any) -> None:
                self.handle.remove()

        return _Scope()


def _spacing(value: float, dtype: torch.dtype) -> float:
    """The distance between neighbouring ``dtype`` numbers around ``|value|`` (its ulp)."""
    info = torch.finfo(dtype)
    return float(2.0 ** math.floor(math.log2(max(abs(value), info.tiny))) * info.eps)


def _as_list(batch: Any) -> list[Any]:
    if isinstance(batch, Mapping | Tensor):
        return [batch]
    return list(batch)


def _targets(labels: Tensor | Sequence[Tensor] | None, count: int) -> list[Any]:
    if labels is None:
        return [None] * count
    listed = [labels] if isinstance(labels, Tensor) else list(labels)
    if len(listed) != count:
        raise RXFError(f"diagnose got {count} batch(es) but {len(listed)} label tensor(s)")
    return listed


def _task_loss(output: Any, target: Any, loss_fn: LossFn | None) -> float:
    if loss_fn is not None:
        return float(loss_fn(output, target))
    if target is None:
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if not isinstance(loss, Tensor):
            raise RXFError(
                f"diagnose needs the task loss, but the model's output ({type(output).__name__}) "
                f"has no loss: put the labels in the batch (e.g. labels=...) or pass "
                f"labels=... / loss_fn=..."
            )
        return float(loss)
    logits = _logits(output).float()
    if logits.shape[-1] == 1:
        return float(F.mse_loss(logits.squeeze(-1), target.float()))
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1)))


def _logits(output: Any) -> Tensor:
    for value in (
        output,
        getattr(output, "logits", None),
        output.get("logits") if isinstance(output, Mapping) else None,
        output[0] if isinstance(output, tuple | list) and output else None,
    ):
        if isinstance(value, Tensor):
            return value
    raise RXFError(f"diagnose found no logits in {type(output).__name__}; pass loss_fn=...")


def _cuda_devices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
