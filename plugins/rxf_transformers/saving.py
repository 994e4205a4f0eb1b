"""A state dict with R4F baked in, for saving a wrapped model without unwrapping it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rxf.discovery import module_path


def baked_state_dict(
    model: nn.Module, linears: list[nn.Linear], state_dict: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``model``'s state dict with each spectral-normalized Linear stored as a plain ``weight``.

    The baked weight is the one the layer uses in eval mode, ``W / σ`` (the same as
    :func:`rxf.unwrap` bakes); the parametrization's ``original``, ``_u`` and ``_v`` entries
    are dropped, so ``from_pretrained`` reads the file like any checkpoint. The model itself
    is not changed.

    Example:
        >>> from torch.nn.utils.parametrizations import spectral_norm
        >>> net = nn.Sequential(nn.Linear(3, 2))
        >>> _ = spectral_norm(net[0])
        >>> sorted(baked_state_dict(net, [net[0]]))
        ['0.bias', '0.weight']
    """
    state = dict(model.state_dict() if state_dict is None else state_dict)
    for linear in linears:
        path = module_path(model, linear)
        prefix = f"{path}.parametrizations.weight."
        for key in [k for k in state if k.startswith(prefix)]:
            del state[key]
        training = linear.training
        linear.eval()
        with torch.no_grad():
            state[f"{path}.weight"] = linear.weight.detach().clone()
        linear.train(training)
    return state
