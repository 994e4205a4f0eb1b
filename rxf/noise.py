"""Noise samplers: what gets added to the embedding output on the noisy pass.

A sampler is called as ``sampler(embeddings, eps, **extras)`` and returns float32 noise of
``embeddings``' shape on its device, drawn with torch's global RNG (so ``torch.manual_seed``
makes it reproducible). A sampler **declares** the extras it needs by naming them as
parameters (like pluggy hook implementations); rxf computes only those, per forward:

- ``mask``: ``(batch, tokens)`` bool, the real (unpadded) input tokens;
- ``lengths``: ``(batch, tokens)`` float32, for each token the real (unpadded) length of
  the sequence it belongs to; padding counts as part of the sequence it pads. Packed rows
  (several examples in one row, as Hugging Face's ``DataCollatorWithFlattening`` makes)
  give each example its own length, found from ``position_ids`` restarting at 0 or from
  ``cu_seq_lens``.

An extra is passed only when it fits the embedding output's leading dimensions (else
``None``), so samplers keep a ``None`` default.
"""

from __future__ import annotations

import inspect
from typing import Protocol

import torch
from torch import Tensor

EXTRAS = ("mask", "lengths")


class NoiseSampler(Protocol):
    """Draws the noise for one noisy pass: ``(embeddings, eps, **declared extras) -> noise``."""

    def __call__(self, embeddings: Tensor, eps: float, /) -> Tensor:
        """Float32 noise of ``embeddings``' shape on its device."""
        ...


def declared_extras(sampler: object) -> tuple[str, ...]:
    """The extras (``mask``, ``lengths``) a sampler names in its signature; all of them for
    a sampler taking ``**kwargs``.

    Example:
        >>> def scaled(embeddings, eps, lengths=None): ...
        >>> declared_extras(scaled), declared_extras(uniform_noise)
        (('lengths',), ())
    """
    try:
        params = inspect.signature(sampler).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return EXTRAS
    return tuple(name for name in EXTRAS if name in params)


def lengths_from_starts(starts: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-token sequence lengths from sequence starts.

    Args:
        starts: ``(batch, tokens)`` bool, True where a sequence begins (the first column is
            always a start).
        mask: ``(batch, tokens)`` real-token mask; padding tokens are not counted.

    Returns:
        ``(batch, tokens)`` float32: for each token, the number of real tokens of the
        sequence it is in (a padding token: of the sequence it pads).

    Example:
        >>> starts = torch.tensor([[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]]).bool()
        >>> lengths_from_starts(starts)[0, [0, 4]].tolist()
        [4.0, 8.0]
    """
    starts = starts.bool().clone()
    starts[:, 0] = True
    real = torch.ones_like(starts, dtype=torch.float32) if mask is None else mask.float()
    segment = torch.cumsum(starts.flatten().long(), 0) - 1
    per_segment = torch.zeros(int(starts.sum()), device=starts.device).index_add_(
        0, segment, real.flatten()
    )
    return per_segment[segment].view(starts.shape)


def uniform_noise(embeddings: Tensor, eps: float) -> Tensor:
    """i.i.d. U(-eps, eps) per element (variance eps²/3), the reference's default.

    Example:
        >>> z = uniform_noise(torch.zeros(2, 3, 4), 0.1)
        >>> bool(z.abs().max() <= 0.1)
        True
    """
    noise = torch.empty(embeddings.shape, dtype=torch.float32, device=embeddings.device)
    return noise.uniform_(-eps, eps)


def normal_noise(embeddings: Tensor, eps: float) -> Tensor:
    """i.i.d. N(0, eps²) per element: ``eps`` is the standard deviation.

    Example:
        >>> normal_noise(torch.zeros(2, 3), 0.1).shape
        torch.Size([2, 3])
    """
    noise = torch.empty(embeddings.shape, dtype=torch.float32, device=embeddings.device)
    return noise.normal_(0.0, eps)


BUILTIN_NOISE_TYPES: dict[str, NoiseSampler] = {
    "uniform": uniform_noise,
    "normal": normal_noise,
}
