"""R4F: spectral normalization on the classification head, and baking it back out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
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

    Returns the layers now parametrized, tagged as rxf's (:func:`mark_r4f`). Layers that
    already carry a weight parametrization are left as they are.

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
    mark_r4f(done)
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


def baked_state_dict(model: nn.Module, state_dict: dict[str, Any] | None = None) -> dict[str, Any]:
    """``model``'s state dict with every R4F layer (copies made since ``wrap`` included)
    stored as a plain ``weight``: ``W / σ``, the weight the layer uses in eval mode.

    The parametrization's ``original``, ``_u`` and ``_v`` entries are dropped, so a
    framework's ``from_pretrained`` reads the file like any checkpoint. The model itself is
    not changed. With ``state_dict`` given (e.g. gathered by a distributed engine), that
    dict is rewritten instead of reading the model's.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 2))
        >>> _ = apply_spectral_norm(net)
        >>> sorted(baked_state_dict(net))
        ['0.bias', '0.weight']
    """
    linears = r4f_linears(model)
    if state_dict is None:
        with baked_state_dicts(linears):
            return dict(model.state_dict())
    state = dict(state_dict)
    paths = {id(m): name for name, m in model.named_modules(remove_duplicate=False)}
    for linear in linears:
        prefix = f"{paths[id(linear)]}." if paths[id(linear)] else ""
        _bake_weight(linear, state, prefix, None)
    return state


_R4F_MARK = "rxf_r4f"


def mark_r4f(linears: list[nn.Linear]) -> None:
    """Tag rxf's spectral-norm parametrizations; copies of the layer (PEFT's
    ``modules_to_save``, ``copy.deepcopy``) carry the tag along."""
    for linear in linears:
        setattr(parametrize_list(linear)[0], _R4F_MARK, True)


def parametrize_list(linear: nn.Module) -> Any:
    """The parametrization list of ``linear``'s ``weight``."""
    return linear.parametrizations.weight  # type: ignore[union-attr]


def r4f_linears(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers under ``model`` that carry rxf's R4F normalization, copies included."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear)
        and parametrize.is_parametrized(m, "weight")
        and any(getattr(p, _R4F_MARK, False) for p in parametrize_list(m))
    ]


def bake_r4f(linears: list[nn.Linear]) -> None:
    """Replace R4F's parametrization by a plain ``weight`` holding ``W / σ`` (eval mode).

    Unlike ``remove_parametrizations`` this leaves deep copies of a layer intact: a copy
    shares its parametrized class, from which torch deletes the ``weight`` property.
    """
    baked = [
        (linear, eval_weight(linear), parametrize_list(linear).original.requires_grad)
        for linear in linears
    ]
    for linear, weight, requires_grad in baked:
        plain = next(c for c in type(linear).__mro__ if not c.__name__.startswith("Parametrized"))
        del linear._modules["parametrizations"]
        linear.__class__ = plain
        linear.weight = nn.Parameter(weight, requires_grad=requires_grad)


@contextlib.contextmanager
def baked_state_dicts(linears: list[nn.Linear]) -> Iterator[None]:
    """While open, the state dict of every module holding one of ``linears`` stores that
    layer as a plain ``weight`` (``W / σ``, as :func:`unwrap` bakes) instead of the
    parametrization's ``original`` / ``_u`` / ``_v``; the layers themselves do not change."""
    handles = [linear._register_state_dict_hook(_bake_weight) for linear in linears]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _bake_weight(linear: nn.Module, state: dict[str, Any], prefix: str, metadata: Any) -> None:
    for key in [k for k in state if k.startswith(prefix + "parametrizations.weight.")]:
        del state[key]
    state[prefix + "weight"] = eval_weight(linear)


def eval_weight(linear: nn.Module) -> Tensor:
    """A copy of the weight ``linear`` uses in eval mode (``W / σ``, no extra power step)."""
    training = linear.training
    linear.eval()
    with torch.no_grad():
        weight = cast(Tensor, linear.weight).detach().clone()
    linear.train(training)
    return weight
