"""Noise samplers match their distributions."""

from __future__ import annotations

import math

import pytest
import torch
from rxf_neftune import neftune_noise

from rxf.noise import lengths_from_starts, normal_noise, uniform_noise

N = 200_000


def test_uniform_noise_distribution() -> None:
    torch.manual_seed(0)
    eps = 0.3
    z = uniform_noise(torch.zeros(N), eps)
    assert z.dtype == torch.float32
    assert z.min() >= -eps and z.max() <= eps
    assert z.min() < -0.99 * eps and z.max() > 0.99 * eps  # reaches the half-width
    # mean 0 with std eps/sqrt(3); 5 standard errors
    assert abs(z.mean().item()) < 5 * eps / math.sqrt(3 * N)
    assert z.std().item() == pytest.approx(eps / math.sqrt(3), rel=0.01)
    # Kolmogorov-Smirnov distance against U(-eps, eps)
    s = torch.sort(z).values.double()
    cdf = (s + eps) / (2 * eps)
    ks = (torch.arange(1, N + 1, dtype=torch.float64) / N - cdf).abs().max().item()
    assert ks < 1.63 / math.sqrt(N)  # 1% critical value


def test_normal_noise_distribution() -> None:
    torch.manual_seed(1)
    eps = 0.05
    z = normal_noise(torch.zeros(N), eps)
    assert abs(z.mean().item()) < 5 * eps / math.sqrt(N)
    assert z.std().item() == pytest.approx(eps, rel=0.01)
    s = torch.sort(z).values.double()
    cdf = torch.distributions.Normal(0.0, eps).cdf(s)
    ks = (torch.arange(1, N + 1, dtype=torch.float64) / N - cdf).abs().max().item()
    assert ks < 1.63 / math.sqrt(N)


def test_noise_is_seedable_and_keeps_shape() -> None:
    like = torch.zeros(3, 5, 2, dtype=torch.bfloat16)
    torch.manual_seed(7)
    a = uniform_noise(like, 1.0)
    torch.manual_seed(7)
    b = uniform_noise(like, 1.0)
    assert a.shape == like.shape and torch.equal(a, b)


def test_zero_eps_gives_zero_noise() -> None:
    assert uniform_noise(torch.ones(10), 0.0).abs().max() == 0
    assert normal_noise(torch.ones(10), 0.0).abs().max() == 0


def test_neftune_scales_by_real_length() -> None:
    torch.manual_seed(2)
    batch, tokens, dim, alpha = 2, 400, 64, 5.0
    mask = torch.zeros(batch, tokens, dtype=torch.bool)
    mask[0, :400] = True
    mask[1, :100] = True
    lengths = lengths_from_starts(torch.zeros_like(mask), mask)
    z = neftune_noise(torch.zeros(batch, tokens, dim), alpha, lengths=lengths)
    for row, length in ((0, 400), (1, 100)):
        bound = alpha / math.sqrt(length * dim)
        assert z[row].abs().max() <= bound
        assert z[row].std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)


@pytest.mark.parametrize("shape", [(4, 8), (2, 3, 4, 5)])
def test_neftune_without_tokens_scales_by_the_values_of_one_example(shape: tuple) -> None:
    # one vector per example, a CNN stem's (batch, C, H, W): L·d = the values of an example
    torch.manual_seed(0)
    z = neftune_noise(torch.zeros(shape), 5.0)
    per_example = math.prod(shape[1:])
    torch.manual_seed(0)
    expected = torch.empty(shape).uniform_(-1, 1) * 5.0 / math.sqrt(per_example)
    torch.testing.assert_close(z, expected)
