"""rxf.batchnorm.frozen_batchnorm_stats: batch statistics normalize, running ones stay put."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rxf.batchnorm import frozen_batchnorm_stats, tracking_batchnorms


def net(momentum: float | None = 0.1) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4, momentum=momentum),
        nn.ReLU(),
        nn.Flatten(),
        nn.BatchNorm1d(4 * 6 * 6),
    )


@pytest.mark.parametrize("momentum", [0.1, None])  # None: cumulative average
def test_output_is_the_training_output_and_statistics_do_not_move(momentum) -> None:
    model = net(momentum)
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with frozen_batchnorm_stats(model) as frozen:
        frozen_out = model(x)
    assert len(frozen) == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    normal_out = model(x)  # training mode: the same batch statistics normalize
    torch.testing.assert_close(frozen_out, normal_out, rtol=0, atol=0)
    assert int(model[1].num_batches_tracked) == 1


def test_flags_are_restored_on_errors_and_eval_layers_left_alone() -> None:
    model = net()
    model[4].eval()
    assert tracking_batchnorms(model) == [model[1]]
    with pytest.raises(RuntimeError), frozen_batchnorm_stats(model):
        assert not model[1].track_running_stats
        model(torch.randn(2, 5, 8, 8))  # wrong channel count
    assert model[1].track_running_stats and model[4].track_running_stats
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with frozen_batchnorm_stats(model):
        hidden = model[:4](x)
        out = model[4](hidden)
    bn = model[4]  # in eval mode: normalized with its running statistics
    expected = (hidden - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight
    torch.testing.assert_close(out, expected + bn.bias)
