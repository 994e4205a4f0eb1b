"""RXFCallback: the regularizer's numbers in the Trainer's logs.

Built on first access of ``rxf_transformers.RXFCallback``, so importing the plugin does not
import ``transformers``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from torch import nn

from rxf import RXFError, RXFModel

LOGGED = ("divergence", "consistency_loss", "noise_to_signal", "perturbation_to_eps")
TRAINING_MODES = ("two_pass", "concat", "noise_only")


def find_rxf_model(model: Any) -> RXFModel | None:
    """The :class:`rxf.RXFModel` in ``model``: under its ``.module`` chain (DDP, accelerate)
    or among its submodules (``get_peft_model(rxf.wrap(model))``)."""
    top = model
    for _ in range(8):
        if isinstance(model, RXFModel):
            return model
        model = getattr(model, "module", None) if isinstance(model, nn.Module) else None
    if isinstance(top, nn.Module):
        return next((m for m in top.modules() if isinstance(m, RXFModel)), None)
    return None


def fused_lm_head_installed(wrapped: RXFModel) -> bool:
    """Whether TRL's fused LM-head forward (``trl.trainer.utils.add_fused_lm_head``) replaced
    the wrapper's ``forward`` on the instance: it runs the backbone directly, bypassing rxf.

    Follows the ``__wrapped__`` chain, so TRL's forward is found under accelerate's
    mixed-precision wrapper too; other replacements that call the wrapper's own forward
    (accelerate's autocast and fp32-output wrappers) are not reported.
    """
    forward: Any = vars(wrapped).get("forward")
    for _ in range(16):
        if forward is None:
            return False
        forward = getattr(forward, "__func__", forward)
        code = getattr(forward, "__code__", None)
        if code is not None and code.co_name == "_fused_forward":
            return True
        forward = getattr(forward, "__wrapped__", None) or getattr(forward, "model_forward", None)
    return False


class StatsMeter:
    """Means of ``last_stats`` numbers over the forwards since the last log.

    Example:
        >>> meter = StatsMeter()
        >>> meter.add({"mode": "two_pass", "divergence": 1.0}); meter.add({"divergence": 3.0})
        >>> meter.flush()
        {'rxf_divergence': 2.0}
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, stats: dict[str, Any]) -> None:
        """Accumulate one forward's ``last_stats`` (the logged keys only)."""
        for key in LOGGED:
            value = stats.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.sums[key] = self.sums.get(key, 0.0) + float(value)
                self.counts[key] = self.counts.get(key, 0) + 1

    def flush(self) -> dict[str, float]:
        """The means since the last flush, as ``rxf_<key>`` log entries; then reset."""
        means = {f"rxf_{key}": self.sums[key] / self.counts[key] for key in self.sums}
        self.sums, self.counts = {}, {}
        return means


@functools.cache
def callback_class() -> type:
    """The ``RXFCallback`` class (a ``transformers.TrainerCallback``), built once."""
    return _build()


def _build() -> type:
    from transformers import TrainerCallback

    class RXFCallback(TrainerCallback):
        """Adds ``rxf_divergence``, ``rxf_consistency_loss``, ``rxf_noise_to_signal`` and
        (SMART) ``rxf_perturbation_to_eps`` (means over the training forwards since the
        previous log) to the Trainer's logs.

        Checks at the start of training that the model is wrapped by :func:`rxf.wrap`, and
        refuses ``label_smoothing_factor`` under the plain ``Trainer``: it pops the labels
        before the forward, so the model's loss (and the R3F term in it) is never computed.
        :class:`rxf_transformers.RXFTrainer` keeps them and adds the term itself. Refuses a
        wrapper whose ``forward`` TRL's ``SFTTrainer`` replaced with its fused LM head (use
        :class:`rxf_transformers.sft.RXFSFTTrainer`), and stops at the end
        of the first step when no training forward of that step went through rxf.

        Example:
            >>> trainer = Trainer(model=rxf.wrap(model), args=args,  # doctest: +SKIP
            ...                   train_dataset=data, callbacks=[RXFCallback()])
        """

        def __init__(self) -> None:
            self.meter = StatsMeter()
            self.keeps_labels = False
            self.owns_forward = False
            self._stats_at_start: dict[str, Any] | None = None

        def on_train_begin(
            self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
        ) -> None:
            wrapped = find_rxf_model(model)
            if wrapped is None and type(model).__module__.startswith("sentence_transformers"):
                raise RXFError(
                    "RXFCallback reads a wrapped model; sentence-transformers models stay "
                    "unwrapped and R3F goes through the loss: drop RXFCallback and read "
                    "rxf_sentence_transformers.RXFLoss(...).last_stats instead."
                )
            if wrapped is None:
                raise RXFError(
                    f"RXFCallback: the Trainer's model ({type(model).__name__}) is not wrapped "
                    f"by rxf; pass model=rxf.wrap(model) to the Trainer."
                )
            if fused_lm_head_installed(wrapped) and not self.owns_forward:
                raise RXFError(
                    "the wrapped model's forward was replaced on the instance (trl's SFTTrainer "
                    "installs its fused LM-head forward there), which calls the inner model "
                    "directly: rxf would add no noise and no term. With trl use "
                    "rxf_transformers.sft.RXFSFTTrainer (same arguments) instead of SFTTrainer."
                )
            self._stats_at_start = wrapped.last_stats
            if getattr(args, "label_smoothing_factor", 0) and not self.keeps_labels:
                raise RXFError(
                    "label_smoothing_factor makes transformers.Trainer pop the labels before the "
                    "forward, so the R3F term never reaches the loss; use "
                    "rxf_transformers.RXFTrainer (same arguments), which keeps them."
                )
            if getattr(args, "neftune_noise_alpha", None) is not None:
                raise RXFError(
                    "neftune_noise_alpha makes the Trainer add NEFTune noise to the embedding "
                    "output with its own hook: under rxf the clean pass would be noisy and the "
                    "noisy pass would get two noises. Leave neftune_noise_alpha unset; for "
                    "NEFTune through rxf wrap with rxf.wrap(model, "
                    "rxf.RXFConfig.preset('neftune', eps=alpha))."
                )
            self.meter = StatsMeter()

        def _collect(self, model: Any) -> None:
            wrapped = find_rxf_model(model)
            if wrapped is not None and wrapped.training:
                self.meter.add(wrapped.last_stats)

        def on_substep_end(
            self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
        ) -> None:
            self._collect(model)

        def on_step_end(
            self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
        ) -> None:
            self._collect(model)
            if self._stats_at_start is not None:  # the first step: did rxf run?
                self._check_went_through_rxf(model)
                self._stats_at_start = None

        def _check_went_through_rxf(self, model: Any) -> None:
            wrapped = find_rxf_model(model)
            stats = wrapped.last_stats if wrapped is not None else {}
            if stats.get("mode") not in TRAINING_MODES or stats == self._stats_at_start:
                raise RXFError(
                    "no training forward of the first step went through rxf (last_stats mode "
                    f"{stats.get('mode')!r}): the Trainer calls the inner model some other way, "
                    "so no noise and no term reached the loss. Pass the wrapped model itself "
                    "to the Trainer and let its compute_loss call it (model(**inputs))."
                )

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            if logs is None or "loss" not in logs:
                return
            metrics = self.meter.flush()
            logs.update(metrics)
            history = state.log_history
            if history and history[-1].get("loss") == logs["loss"]:
                history[-1].update(metrics)

    RXFCallback.__module__ = "rxf_transformers"
    return RXFCallback
