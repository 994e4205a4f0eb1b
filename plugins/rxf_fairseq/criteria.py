"""The two reference criteria as loss functions for fairseq-style loops.

Each criterion is called like a fairseq criterion, ``criterion(model, sample)`` with a
model returned by :func:`rxf.wrap`, and returns ``(loss, sample_size, logging_output)``.
As in fairseq, ``loss`` is a **sum** over the batch (sentences or target tokens) and
``sample_size`` is what the trainer divides the gradient by; the consistency term is
multiplied by ``sample_size`` so that after that division it is ``λ · divergence``:

* ``sentence_prediction_r3f``: ``Σ_i NLL_i + λ · B · mean_i KL_S,i`` (B = sentences).
* ``label_smoothed_cross_entropy_r3f``: ``Σ_t LS-NLL_t + λ · sample_size · D`` where D is
  ``Σ_{all positions} KL_S / B`` with ``RXFConfig(token_reduction="reference")`` (the
  reference) or the mean over real target tokens with ``"mean"`` (rxf's default).

The noisy pass and ``λ · D`` come from the wrapper (``model.consistency_loss``), so the
wrapper's config decides noise, divergence and token reduction; :func:`reference_config`
returns the reference criteria's settings.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rxf import RXFConfig, RXFError, RXFModel

_REFERENCE = {
    "sentence_prediction_r3f": {"noise_type": "uniform", "detach_noisy_embedding": True},
    "label_smoothed_cross_entropy_r3f": {
        "noise_type": "normal",
        "detach_noisy_embedding": False,
        "token_reduction": "reference",
    },
}


def reference_config(
    criterion: Literal["sentence_prediction_r3f", "label_smoothed_cross_entropy_r3f"],
    **overrides: Any,
) -> RXFConfig:
    """The settings of fairseq's reference criterion, with ``overrides`` on top.

    ``sentence_prediction_r3f``: uniform noise on a detached embedding. ``label_smoothed_
    cross_entropy_r3f``: normal noise, the noisy pass's gradient reaches the embedding,
    divergence summed over all target positions (padding included) per sentence.

    Example:
        >>> reference_config("label_smoothed_cross_entropy_r3f", eps=1e-5).token_reduction
        'reference'
    """
    if criterion not in _REFERENCE:
        raise ValueError(f"criterion must be one of {sorted(_REFERENCE)}, got {criterion!r}")
    return RXFConfig.from_dict({**_REFERENCE[criterion], **overrides})


def label_smoothed_nll_loss(
    lprobs: Tensor, target: Tensor, epsilon: float, ignore_index: int | None = None
) -> tuple[Tensor, Tensor]:
    """Summed label-smoothed NLL and plain NLL over the target positions, as fairseq.

    ``loss = (1 - ε - ε_i) · NLL + ε_i · Σ_v (-log p_v)`` with ``ε_i = ε / (V - 1)``, both
    terms zero where ``target == ignore_index``.

    Example:
        >>> lp = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
        >>> [round(float(v), 4) for v in label_smoothed_nll_loss(lp, torch.tensor([0]), 0.0)]
        [0.6931, 0.6931]
    """
    target = target.reshape(-1)
    lprobs = lprobs.reshape(target.numel(), -1)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    smooth = -lprobs.sum(-1)
    if ignore_index is not None:
        keep = target.ne(ignore_index)
        nll, smooth = nll * keep, smooth * keep
    eps_i = epsilon / (lprobs.shape[-1] - 1)
    nll_sum = nll.sum()
    return (1.0 - epsilon - eps_i) * nll_sum + eps_i * smooth.sum(), nll_sum


def _rxf_model(model: nn.Module) -> RXFModel:
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if not isinstance(inner, RXFModel):
        raise RXFError(
            f"the R3F criteria take a model returned by rxf.wrap(model), got "
            f"{type(model).__name__}; wrap it first (the wrapper runs the noisy pass)."
        )
    return inner


def _consistency(model: RXFModel, sample_size: int, active: bool) -> tuple[Tensor, Tensor]:
    """``λ·D·sample_size`` for the loss and ``D·sample_size`` for the log (D: divergence)."""
    stats = model.last_stats
    if not (active and model.training and "divergence" in stats):
        zero = model.consistency_loss.new_zeros(())
        return zero, zero
    divergence = torch.tensor(stats["divergence"])
    return model.consistency_loss * sample_size, divergence * sample_size


def _log(values: dict[str, Any], reduce: bool) -> dict[str, Any]:
    return {k: (v.item() if reduce and isinstance(v, Tensor) else v) for k, v in values.items()}


class SentencePredictionR3F:
    """fairseq's ``sentence_prediction_r3f``: sentence classification or regression + R3F.

    Classification: ``loss = Σ_i NLL_i + λ · Σ_i KL_S,i``. Regression
    (``regression_target=True``): ``loss = Σ_i (ŷ_i - y_i)²``; the reference computes a
    KL over a one-output softmax there, which is identically 0, and drops it, so R3F does
    nothing. rxf adds ``λ · Σ_i (ŷ_i - ŷ'_i)²`` instead (the wrapper's
    ``regression_divergence``); ``regression_consistency=False`` gives the reference.

    Logging: ``loss``, ``nll_loss`` (the task loss alone), ``symm_kl`` (``Σ_i`` divergence,
    unweighted by λ), ``ntokens``, ``nsentences``, ``sample_size``, ``ncorrect``
    (classification).

    Example:
        >>> criterion = SentencePredictionR3F("sentence_classification_head")
        >>> criterion.regression_target
        False
    """

    def __init__(
        self,
        classification_head_name: str = "sentence_classification_head",
        regression_target: bool = False,
        regression_consistency: bool = True,
    ) -> None:
        self.classification_head_name = classification_head_name
        self.regression_target = regression_target
        self.regression_consistency = regression_consistency

    def __call__(
        self, model: nn.Module, sample: dict[str, Any], reduce: bool = True
    ) -> tuple[Tensor, int, dict[str, Any]]:
        """The reference's ``(loss, sample_size, logging_output)`` for one fairseq sample."""
        rxf_model = _rxf_model(model)
        heads = getattr(rxf_model.module, "classification_heads", {})
        if self.classification_head_name not in heads:
            raise RXFError(
                f"{type(rxf_model.module).__name__} has no classification head "
                f"{self.classification_head_name!r} (has: {', '.join(heads) or 'none'}); pass "
                f"SentencePredictionR3F(classification_head_name=...)."
            )
        logits, _ = model(
            **sample["net_input"],
            features_only=True,
            classification_head_name=self.classification_head_name,
        )
        targets = sample["target"].reshape(-1)
        sample_size = targets.numel()
        if self.regression_target:
            nll = F.mse_loss(logits.reshape(-1).float(), targets.float(), reduction="sum")
        else:
            nll = F.nll_loss(F.log_softmax(logits.float(), dim=-1), targets, reduction="sum")
        active = not self.regression_target or self.regression_consistency
        term, symm_kl = _consistency(rxf_model, sample_size, active)
        loss = nll + term
        logging = {
            "loss": loss.detach(),
            "nll_loss": nll.detach(),
            "symm_kl": symm_kl,
            "ntokens": sample["ntokens"],
            "nsentences": sample_size,
            "sample_size": sample_size,
        }
        if not self.regression_target:
            logging["ncorrect"] = (logits.argmax(-1) == targets).sum()
        return loss, sample_size, _log(logging, reduce)


class LabelSmoothedCrossEntropyR3F:
    """fairseq's ``label_smoothed_cross_entropy_r3f``: seq2seq cross-entropy + R3F.

    ``loss = Σ_t LS-NLL_t + λ · sample_size · D`` over target tokens that are not padding,
    ``sample_size = sample["ntokens"]`` (or the number of sentences with
    ``sentence_avg=True``); D as in the module docstring. ``padding_idx`` defaults to the
    decoder lookup's.

    Logging: ``loss``, ``nll_loss`` (summed, unsmoothed), ``symm_kl`` (``sample_size · D``),
    ``ntokens``, ``nsentences``, ``sample_size``.

    Example:
        >>> LabelSmoothedCrossEntropyR3F(label_smoothing=0.1).label_smoothing
        0.1
    """

    def __init__(
        self,
        label_smoothing: float = 0.0,
        sentence_avg: bool = False,
        padding_idx: int | None = None,
    ) -> None:
        self.label_smoothing = label_smoothing
        self.sentence_avg = sentence_avg
        self.padding_idx = padding_idx

    def __call__(
        self, model: nn.Module, sample: dict[str, Any], reduce: bool = True
    ) -> tuple[Tensor, int, dict[str, Any]]:
        """The reference's ``(loss, sample_size, logging_output)`` for one fairseq sample."""
        rxf_model = _rxf_model(model)
        padding_idx = self._padding_idx(rxf_model.module)
        logits, _ = model(**sample["net_input"])
        target = sample["target"]
        lprobs = F.log_softmax(logits.float(), dim=-1)
        loss, nll = label_smoothed_nll_loss(lprobs, target, self.label_smoothing, padding_idx)
        sample_size = target.shape[0] if self.sentence_avg else int(sample["ntokens"])
        term, symm_kl = _consistency(rxf_model, sample_size, active=True)
        loss = loss + term
        logging = {
            "loss": loss.detach(),
            "nll_loss": nll.detach(),
            "symm_kl": symm_kl,
            "ntokens": sample["ntokens"],
            "nsentences": target.shape[0],
            "sample_size": sample_size,
        }
        return loss, sample_size, _log(logging, reduce)

    def _padding_idx(self, model: nn.Module) -> int:
        if self.padding_idx is not None:
            return self.padding_idx
        pad = getattr(
            getattr(getattr(model, "decoder", None), "embed_tokens", None), "padding_idx", None
        )
        if not isinstance(pad, int):
            raise RXFError(
                f"{type(model).__name__} has no decoder.embed_tokens.padding_idx; pass "
                f"LabelSmoothedCrossEntropyR3F(padding_idx=...) (fairseq: dictionary.pad())."
            )
        return pad
