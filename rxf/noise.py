"""Noise samplers: what gets added to the embedding output on the noisy pass.

A sampler is called as ``sampler(embeddings, eps, mask=None)`` and returns float32 noise of
``embeddings``' shape on its device, drawn with torch's global RNG (so ``torch.manual_seed``
makes it reproducible). ``mask`` is the ``(batch, tokens)`` real-token mask when the model
has one; length-aware samplers use it, the others ignore it.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class NoiseSampler(Protocol):
    """Draws the noise for one noisy pass."""

    def __call__(self, embeddings: Tensor, eps: float, mask: Tensor | None = None) -> Tensor: ...


def uniform_noise(embeddings: Tensor, eps: float, mask: Tensor | None = None) -> Tensor:
    """i.i.d. U(-eps, eps) per element (variance eps²/3), the reference's default.

    Example:
        >>> z = uniform_noise(torch.zeros(2, 3, 4), 0.1)
        >>> bool(z.abs().max() <= 0.1)
        True
    """
    noise = torch.empty(embeddings.shape, dtype=torch.float32, device=embeddings.device)
    return noise.uniform_(-eps, eps)


def normal_noise(embeddings: Tensor, eps: float, mask: Tensor | None = None) -> Tensor:
    """i.i.d. N(0, eps²) per element: ``eps`` is the standard deviation.

    Example:
        >>> normal_noise(torch.zeros(2, 3), 0.1).shape
        torch.Size([2, 3])
    """
    noise = torch.empty(embeddings.shape, dtype=torch.float32, device=embeddings.device)
    return noise.normal_(0.0, eps)


def neftune_noise(embeddings: Tensor, eps: float, mask: Tensor | None = None) -> Tensor:
    """NEFTune's noise (Jain et al., 2023): U(-1, 1) · eps / √(L·d), ``eps`` playing α.

    ``L`` is each sequence's real (unpadded) length, taken from ``mask`` when given, else the
    padded length; ``d`` the embedding width. Expects ``(batch, tokens, d)`` embeddings.

    Example:
        >>> z = neftune_noise(torch.zeros(1, 4, 16), 5.0)
        >>> bool(z.abs().max() <= 5.0 / 8)
        True
    """
    if embeddings.dim() != 3:
        raise ValueError(
            f"neftune noise needs (batch, tokens, dim) embeddings, got shape "
            f"{tuple(embeddings.shape)}; use noise_type='uniform' for this model."
        )
    batch, tokens, dim = embeddings.shape
    if mask is None:
        lengths = torch.full((batch,), float(tokens), device=embeddings.device)
    else:
        lengths = mask.to(device=embeddings.device, dtype=torch.float32).sum(-1).clamp_min(1.0)
    scale = eps / torch.sqrt(lengths * dim)
    return uniform_noise(embeddings, 1.0) * scale.view(batch, 1, 1)


BUILTIN_NOISE_TYPES: dict[str, NoiseSampler] = {
    "uniform": uniform_noise,
    "normal": normal_noise,
    "neftune": neftune_noise,
}
