"""Divergences between clean and noisy outputs, in float32 (float64 for float64 inputs).

Each divergence maps two logits tensors of shape ``(..., classes)`` to one value per
position (shape ``(...)``); :func:`reduce_positions` turns those into the scalar term. All
of them compute in float32 whatever the input dtype, and let gradients flow into both sides.
Entries that are ``-inf`` on **both** sides (a class masked out of both passes: multiple
choice, constrained vocabularies) contribute exactly 0, with finite gradients.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

TokenReduction = Literal["mean", "reference"]


class Divergence(Protocol):
    """Maps (clean, noisy) logits to one divergence value per position, in float32."""

    def __call__(self, clean: Tensor, noisy: Tensor) -> Tensor:
        """One float32 value per position: the class dimension reduced."""
        ...


def _log_probs(logits: Tensor) -> Tensor:
    return F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def _without_shared_neg_inf(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``a`` and ``b`` with entries that are -inf in both replaced by 0, and where they were.

    ``-inf - -inf`` is NaN, and so is every gradient through it even when the entry is
    masked afterwards; replacing the inputs first keeps value and gradients finite. No host
    sync: the masking always runs (a few elementwise passes).
    """
    both = torch.isneginf(a) & torch.isneginf(b)
    return a.masked_fill(both, 0.0), b.masked_fill(both, 0.0), both


def _summed(values: Tensor, both: Tensor) -> Tensor:
    """Sum over the class dimension, entries masked on both sides counting 0."""
    return values.masked_fill(both, 0.0).sum(-1)


def _kl_terms(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Elementwise p · (log p − log q), 0 where p = 0."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True)


def symmetric_kl_per_position(clean: Tensor, noisy: Tensor) -> Tensor:
    """KL(P‖Q) + KL(Q‖P) per position, P = softmax(clean), Q = softmax(noisy)."""
    log_p, log_q, both = _without_shared_neg_inf(_log_probs(clean), _log_probs(noisy))
    return _summed(_kl_terms(log_p, log_q) + _kl_terms(log_q, log_p), both)


def kl_per_position(clean: Tensor, noisy: Tensor) -> Tensor:
    """KL(P‖Q) per position: clean distribution P, noisy Q."""
    log_p, log_q, both = _without_shared_neg_inf(_log_probs(clean), _log_probs(noisy))
    return _summed(_kl_terms(log_p, log_q), both)


def js_per_position(clean: Tensor, noisy: Tensor) -> Tensor:
    """Jensen-Shannon divergence per position: ½KL(P‖M) + ½KL(Q‖M), M = (P+Q)/2."""
    log_p, log_q, both = _without_shared_neg_inf(_log_probs(clean), _log_probs(noisy))
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    return _summed(0.5 * (_kl_terms(log_p, log_m) + _kl_terms(log_q, log_m)), both)


def mse_per_position(clean: Tensor, noisy: Tensor) -> Tensor:
    """Squared difference of real-valued outputs, summed over the last dimension."""
    work = torch.promote_types(torch.promote_types(clean.dtype, noisy.dtype), torch.float32)
    a, b, both = _without_shared_neg_inf(clean.to(work), noisy.to(work))
    return _summed((a - b).pow(2), both)


BUILTIN_DIVERGENCES: dict[str, Divergence] = {
    "symmetric_kl": symmetric_kl_per_position,
    "kl": kl_per_position,
    "js": js_per_position,
    "mse": mse_per_position,
}


def reduce_positions(
    per_position: Tensor, mask: Tensor | None = None, token_reduction: TokenReduction = "mean"
) -> Tensor:
    """Reduce per-position divergences to the scalar term.

    ``(batch,)`` values (sequence-level heads) are averaged over examples. ``(batch, T)``
    values (token-level heads): ``"mean"`` averages over the positions where ``mask`` is true
    (all positions without a mask); ``"reference"`` sums over every position, padding
    included, and divides by the batch size, as fairseq's ``label_smoothed_cross_entropy_r3f``.

    Example:
        >>> reduce_positions(torch.tensor([[1.0, 3.0], [2.0, 0.0]]), torch.tensor([[1, 1], [1, 0]]))
        tensor(2.)
    """
    if per_position.dim() <= 1 or token_reduction == "reference":
        batch = per_position.shape[0] if per_position.dim() else 1
        return per_position.sum() / batch
    if token_reduction != "mean":
        raise ValueError(f"token_reduction must be 'mean' or 'reference', got {token_reduction!r}")
    if mask is None:
        return per_position.mean()
    mask = mask.to(device=per_position.device, dtype=torch.bool)
    if mask.shape != per_position.shape:
        raise ValueError(
            f"token mask of shape {tuple(mask.shape)} does not match the logits' positions "
            f"{tuple(per_position.shape)}"
        )
    count = mask.sum().clamp_min(1)
    return torch.where(mask, per_position, torch.zeros_like(per_position)).sum() / count


def _scalar(
    fn: Divergence,
    clean: Tensor,
    noisy: Tensor,
    mask: Tensor | None,
    token_reduction: TokenReduction,
) -> Tensor:
    return reduce_positions(fn(clean, noisy), mask, token_reduction)


def symmetric_kl(
    clean: Tensor,
    noisy: Tensor,
    mask: Tensor | None = None,
    token_reduction: TokenReduction = "mean",
) -> Tensor:
    """KL_S(P, Q) = KL(P‖Q) + KL(Q‖P) of the softmaxes, summed over classes, mean over examples.

    The R3F term of Aghajanyan et al. (2020), Eq. 1, with the reduction of fairseq's
    ``sentence_prediction_r3f`` criterion (summed over classes, divided by the batch size).
    Computed in float32 and in log space (finite gradients also when probabilities
    underflow); gradients flow into both arguments; classes that are ``-inf`` on both sides
    count 0.

    Args:
        clean: logits of the clean pass, any floating dtype.
        noisy: logits of the noisy pass, the same shape.
        mask: token-level only: which positions count (see :func:`reduce_positions`).
        token_reduction: token-level only: ``"mean"`` over counted positions, or
            ``"reference"`` (fairseq's ``label_smoothed_cross_entropy_r3f``).

    Shape:
        ``clean``, ``noisy``: ``(batch, classes)`` or ``(batch, positions, classes)``;
        ``mask``: ``(batch, positions)`` bool. Returns a 0-dim float32 tensor.

    Raises:
        ValueError: a mask whose shape differs from the logits' positions.

    Example:
        >>> p = torch.tensor([[2.0, 0.0]])
        >>> float(symmetric_kl(p, p))
        0.0
    """
    return _scalar(symmetric_kl_per_position, clean, noisy, mask, token_reduction)


def kl(
    clean: Tensor,
    noisy: Tensor,
    mask: Tensor | None = None,
    token_reduction: TokenReduction = "mean",
) -> Tensor:
    """KL(P‖Q), P = softmax(clean), Q = softmax(noisy); reduced like :func:`symmetric_kl`."""
    return _scalar(kl_per_position, clean, noisy, mask, token_reduction)


def js(
    clean: Tensor,
    noisy: Tensor,
    mask: Tensor | None = None,
    token_reduction: TokenReduction = "mean",
) -> Tensor:
    """Jensen-Shannon divergence of the softmaxes; reduced like :func:`symmetric_kl`."""
    return _scalar(js_per_position, clean, noisy, mask, token_reduction)


def mse(
    clean: Tensor,
    noisy: Tensor,
    mask: Tensor | None = None,
    token_reduction: TokenReduction = "mean",
) -> Tensor:
    """Squared error of real-valued outputs (regression heads), reduced like symmetric_kl."""
    return _scalar(mse_per_position, clean, noisy, mask, token_reduction)
