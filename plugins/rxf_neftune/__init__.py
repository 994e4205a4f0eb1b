"""NEFTune's noise as an rxf noise type, ``noise_type="neftune"`` (a first-party plugin).

NEFTune (Jain et al., 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning") adds
``U(-1, 1) · α / √(L·d)`` to the token embeddings during supervised fine-tuning. Under rxf it
is a noise type like any plugin's: registered through the ``rxf`` entry-point group (name
``neftune``), and it *declares* what it needs, ``lengths`` (each token's example length, per
example also in packed rows), by naming it in its signature. Use it alone (noise only) with
``r3f_lambda=0``, ``eps`` playing α::

    model = rxf.wrap(causal_lm, noise_type="neftune", eps=5.0, r3f_lambda=0.0)

This package doubles as the smallest example of a noise plugin.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rxf import hookimpl
from rxf.noise import NoiseSampler, uniform_noise

__all__ = ["neftune_noise", "rxf_register_noise_types"]


def neftune_noise(embeddings: Tensor, eps: float, lengths: Tensor | None = None) -> Tensor:
    """NEFTune's noise (Jain et al., 2023, Algorithm 1): U(-1, 1) · eps / √(L·d), ``eps``
    playing α.

    ``L`` is the real (unpadded) length of the example each token belongs to, from
    ``lengths`` (per example also in packed rows); without it, the padded row length. ``d``
    is the embedding width. For ``(batch, tokens, d)`` embeddings; padding tokens get the
    scale of the sequence they pad. Any other shape (a CNN stem's ``(batch, C, H, W)``, one
    vector per example) has no token lengths: ``L·d`` is then the number of values of one
    example, the same √(L·d) normalization (the paper defines NEFTune for token embeddings
    only; this is rxf's extension to the vision families).

    Example:
        >>> z = neftune_noise(torch.zeros(1, 4, 16), 5.0)
        >>> bool(z.abs().max() <= 5.0 / 8)
        True
        >>> bool(neftune_noise(torch.zeros(2, 3, 4, 4), 6.0).abs().max() <= 6.0 / 48**0.5)
        True
    """
    if embeddings.dim() != 3:
        per_example = embeddings[0].numel() if embeddings.dim() else 1
        return uniform_noise(embeddings, 1.0) * (eps / per_example**0.5)
    batch, tokens, dim = embeddings.shape
    if lengths is None:
        lengths = torch.full((batch, tokens), float(tokens), device=embeddings.device)
    lengths = lengths.to(device=embeddings.device, dtype=torch.float32)
    scale = torch.where(lengths > 0, eps / torch.sqrt(lengths.clamp_min(1.0) * dim), 0.0)
    return uniform_noise(embeddings, 1.0) * scale.unsqueeze(-1)


@hookimpl
def rxf_register_noise_types() -> dict[str, NoiseSampler]:
    """``"neftune"``: :func:`neftune_noise`."""
    return {"neftune": neftune_noise}
