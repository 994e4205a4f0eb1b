"""R4F: spectral normalization on the classification head, and baking it back out."""

from __future__ import annotations

from typing import Any, Literal, cast

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from rxf.errors import RXFError


def head_linears(head: nn.Module, scope: Literal["final", "all"] = "final") -> list[nn.Linear]:
    """The Linear layers of ``head`` that R4F normalizes: the last one, or all of them."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise RXFError(
            f"R4F needs a Linear layer in the head, but {type(head).__name__} has none; point "
            f"RXFConfig(head=...) at the classification head."
        )
    return linears if scope == "all" else linears[-1:]


def apply_spectral_norm(
    head: nn.Module, scope: Literal["final", "all"] = "final"
) -> list[nn.Linear]:
    """Put ``torch.nn.utils.parametrizations.spectral_norm`` on the head's Linear layers.

    Returns the layers now parametrized. Layers that already carry a weight
    parametrization are left as they are.

    Example:
        >>> head = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> [type(m).__name__ for m in apply_spectral_norm(head)]
        ['ParametrizedLinear']
    """
    done = []
    for linear in head_linears(head, scope):
        _check_whole(linear)
        if not parametrize.is_parametrized(linear, "weight"):
            spectral_norm(linear)
            _start_at_top_singular_pair(linear)
            done.append(linear)
    return done


def _check_whole(linear: nn.Linear) -> None:
    """Refuse a head weight that is already sharded: its σ needs the whole matrix."""
    weight = linear.weight
    sharded = (
        type(weight).__name__ == "DTensor"  # FSDP2 fully_shard, tensor parallel
        or hasattr(weight, "ds_id")  # DeepSpeed ZeRO-3 partitioned parameter
        or weight.numel() == 0
    )
    if sharded:
        raise RXFError(
            f"R4F needs the whole weight of the head's {type(linear).__name__} to normalize it "
            f"by its largest singular value, but the weight is sharded "
            f"({type(weight).__name__} of shape {tuple(weight.shape)}: FSDP2 fully_shard or "
            f"DeepSpeed ZeRO-3). Wrap before sharding: rxf.wrap(model, spectral_norm_head=True) "
            f"first, then fully_shard / deepspeed.initialize."
        )


def _start_at_top_singular_pair(linear: nn.Linear) -> None:
    """Point the power iteration's vectors at the weight's exact top singular pair.

    torch starts from random vectors and 15 power steps, which leaves σ̂ up to ~2% below σ
    on fresh heads whose top singular values are close (a fresh 1000-way timm head: 1.2221
    vs 1.2194), so W/σ̂ would start above 1. One SVD at wrap time fixes the start; each
    training forward then does its one power step as usual.
    """
    parametrized = cast(Any, linear).parametrizations.weight
    normalizer, weight = parametrized[0], parametrized.original.detach()
    with torch.no_grad():
        u, _, vh = torch.linalg.svd(weight.float(), full_matrices=False)
        normalizer._u.copy_(u[:, 0])
        normalizer._v.copy_(vh[0])


def remove_spectral_norm(linears: list[nn.Linear]) -> None:
    """Bake the normalized weight W/σ into plain ``weight`` parameters and drop the parametrization.

    The baked weight is the one the model uses in eval mode, so outputs do not change.
    """
    for linear in linears:
        if parametrize.is_parametrized(linear, "weight"):
            # eval mode: bake the weight the model uses at inference, with no extra power step
            training = linear.training
            linear.eval()
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=True)
            linear.train(training)


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
        from rxf.discovery import module_path

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
