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

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


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
    for bn in frozen:
        bn.track_running_stats = False
    try:
        yield frozen
    finally:
        for bn in frozen:
            bn.track_running_stats = True
