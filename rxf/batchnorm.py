"""Keep BatchNorm running statistics out of the noisy pass.

R3F's second forward sees perturbed inputs. BatchNorm layers in training mode would fold
that pass's batch statistics into their running mean and variance (and count it in
``num_batches_tracked``), so evaluation would drift with the noise. Inside
:func:`frozen_batchnorm_stats` the layers still normalize with the batch's own statistics,
exactly like the clean pass, but update nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from rxf.errors import RXFError


def tracking_batchnorms(module: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``module`` that would update running statistics now.

    Those in training mode with ``track_running_stats``; layers in eval mode (frozen BN)
    use their running statistics and update nothing anyway.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
        >>> len(tracking_batchnorms(net)), len(tracking_batchnorms(net.eval()))
        (1, 0)
    """
    return [
        m
        for m in module.modules()
        if isinstance(m, _BatchNorm) and m.training and m.track_running_stats
    ]


@contextmanager
def frozen_batchnorm_stats(module: nn.Module) -> Iterator[list[_BatchNorm]]:
    """Run forwards that normalize with batch statistics but leave running statistics alone.

    Turns ``track_running_stats`` off on every BatchNorm layer of ``module`` that would
    update its statistics (:func:`tracking_batchnorms`) and turns it back on at exit, also
    when the forward raises. In training mode, PyTorch's BatchNorm (and subclasses that
    follow its forward, e.g. timm's ``BatchNormAct2d``) then normalizes with the batch's
    mean and variance, as in the clean pass, and touches neither ``running_mean``,
    ``running_var`` nor ``num_batches_tracked``. Yields the layers it froze.

    Example:
        >>> import torch
        >>> bn = nn.BatchNorm1d(2)
        >>> with frozen_batchnorm_stats(bn):
        ...     _ = bn(torch.randn(8, 2) + 5)
        >>> bn.running_mean.tolist(), int(bn.num_batches_tracked), bn.track_running_stats
        ([0.0, 0.0], 0, True)
    """
    frozen = tracking_batchnorms(module)
    grad_at_start = torch.is_grad_enabled()
    handles = [bn.register_forward_pre_hook(_refuse_checkpointed(grad_at_start)) for bn in frozen]
    for bn in frozen:
        bn.track_running_stats = False
    try:
        yield frozen
    finally:
        for bn in frozen:
            bn.track_running_stats = True
        for handle in handles:
            handle.remove()


def _refuse_checkpointed(grad_at_start: bool) -> Any:
    """A pre-hook that refuses a BatchNorm forward inside an activation-checkpointed segment.

    The segment is recomputed during the backward, after this scope has ended: a reentrant
    recomputation would fold the noisy batch into the running statistics, a non-reentrant
    one fails with torch's ``CheckpointError`` (the recomputed BatchNorm saves different
    tensors). Reentrant segments run their forward under ``no_grad``; non-reentrant ones
    under torch's checkpoint saved-tensor hooks.
    """

    def hook(module: nn.Module, args: Any) -> None:
        reentrant = grad_at_start and not torch.is_grad_enabled()
        if reentrant or _inside_non_reentrant_checkpoint():
            raise RXFError(
                f"{type(module).__name__} in training mode runs inside an activation-"
                f"checkpointed segment of the noisy pass: its recomputation in the backward "
                f"would update the running statistics with the noisy batch (reentrant) or fail "
                f"(non-reentrant). Freeze the BatchNorm layers (module.eval() on them: "
                f"running statistics, no update), or turn gradient checkpointing off (timm: "
                f"model.set_grad_checkpointing(False))."
            )

    return hook


def _inside_non_reentrant_checkpoint() -> bool:
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    hooks = top(False) if callable(top) else None
    pack = hooks[0] if hooks else None
    return "checkpoint" in getattr(pack, "__qualname__", "")
