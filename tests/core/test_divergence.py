"""Divergences against independently written formulas."""

from __future__ import annotations

import pytest
import torch

from rxf import divergence as D


def two_direction_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Reference: sum_c p (log p - log q) + q (log q - log p), mean over examples, float64."""
    p = torch.softmax(p_logits.double(), -1)
    q = torch.softmax(q_logits.double(), -1)
    kl_pq = (p * (p.log() - q.log())).sum(-1)
    kl_qp = (q * (q.log() - p.log())).sum(-1)
    return (kl_pq + kl_qp).mean()


def test_symmetric_kl_matches_two_direction_formula() -> None:
    torch.manual_seed(0)
    for classes in (2, 5, 100):
        p, q = torch.randn(8, classes), torch.randn(8, classes)
        expected = two_direction_kl(p, q)
        assert torch.allclose(D.symmetric_kl(p, q).double(), expected, atol=1e-6, rtol=1e-6)


def test_symmetric_kl_matches_torch_distributions() -> None:
    torch.manual_seed(1)
    p, q = torch.randn(6, 4), torch.randn(6, 4)
    P, Q = torch.distributions.Categorical(logits=p), torch.distributions.Categorical(logits=q)
    expected = (
        torch.distributions.kl_divergence(P, Q) + torch.distributions.kl_divergence(Q, P)
    ).mean()
    assert torch.allclose(D.symmetric_kl(p, q), expected, atol=1e-6)


def test_symmetric_kl_properties() -> None:
    torch.manual_seed(2)
    p, q = torch.randn(16, 7) * 3, torch.randn(16, 7) * 3
    value = D.symmetric_kl(p, q)
    assert value > 0
    assert torch.allclose(value, D.symmetric_kl(q, p), atol=1e-6)
    assert D.symmetric_kl(p, p).abs() < 1e-7
    assert D.symmetric_kl(p, p + 5.0).abs() < 1e-5  # softmax is shift invariant


@pytest.mark.parametrize("scale", [1e2, 1e3, 1e4])
def test_symmetric_kl_finite_for_extreme_logits(scale: float) -> None:
    torch.manual_seed(3)
    p = (torch.randn(4, 10) * scale).requires_grad_()
    q = (torch.randn(4, 10) * scale).requires_grad_()
    value = D.symmetric_kl(p, q)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()


def test_symmetric_kl_large_vocabulary_finite_gradients() -> None:
    torch.manual_seed(4)
    p = (torch.randn(2, 3, 50_000) * 30).requires_grad_()
    q = (torch.randn(2, 3, 50_000) * 30).requires_grad_()
    value = D.symmetric_kl(p, q)
    value.backward()
    assert torch.isfinite(value) and value > 0
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()


def test_reference_form_would_nan_where_log_space_does_not() -> None:
    # The probability-space form of the reference: p * (log p - log q) with underflowed p.
    p = torch.tensor([[0.0, 200.0]], requires_grad=True)
    q = torch.tensor([[200.0, 0.0]], requires_grad=True)
    value = D.symmetric_kl(p, q)
    value.backward()
    assert torch.isfinite(p.grad).all() and torch.allclose(value, torch.tensor(400.0))


def test_gradients_flow_into_both_sides() -> None:
    torch.manual_seed(5)
    p, q = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    D.symmetric_kl(p, q).backward()
    assert p.grad.abs().sum() > 0 and q.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_in_float32(dtype: torch.dtype) -> None:
    torch.manual_seed(6)
    p, q = torch.randn(4, 9), torch.randn(4, 9)
    value = D.symmetric_kl(p.to(dtype), q.to(dtype))
    assert value.dtype == torch.float32
    expected = two_direction_kl(p.to(dtype).float(), q.to(dtype).float())
    assert torch.allclose(value.double(), expected, atol=1e-6)


def test_kl_and_js_against_formulas() -> None:
    torch.manual_seed(7)
    p_logits, q_logits = torch.randn(5, 6), torch.randn(5, 6)
    p, q = torch.softmax(p_logits.double(), -1), torch.softmax(q_logits.double(), -1)
    m = (p + q) / 2
    kl_pq = (p * (p / q).log()).sum(-1).mean()
    js = (0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)).mean()
    assert torch.allclose(D.kl(p_logits, q_logits).double(), kl_pq, atol=1e-6)
    assert torch.allclose(D.js(p_logits, q_logits).double(), js, atol=1e-6)
    assert D.js(p_logits, q_logits) <= torch.log(torch.tensor(2.0)) + 1e-6


def test_mse_for_real_valued_outputs() -> None:
    clean = torch.tensor([[1.0], [2.0], [0.5]])
    noisy = torch.tensor([[1.5], [1.0], [0.5]])
    expected = (0.25 + 1.0 + 0.0) / 3
    assert torch.allclose(D.mse(clean, noisy), torch.tensor(expected))


def test_token_level_mean_over_mask_and_reference_reduction() -> None:
    torch.manual_seed(8)
    p, q = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    per = torch.stack(
        [
            torch.stack([two_direction_kl(p[b, t : t + 1], q[b, t : t + 1]) for t in range(4)])
            for b in range(2)
        ]
    )
    expected_mean = per[mask].sum() / 4
    expected_reference = per.sum() / 2
    assert torch.allclose(D.symmetric_kl(p, q, mask).double(), expected_mean, atol=1e-6)
    reference = D.symmetric_kl(p, q, mask, token_reduction="reference").double()
    assert torch.allclose(reference, expected_reference, atol=1e-6)
    assert torch.allclose(D.symmetric_kl(p, q).double(), per.mean(), atol=1e-6)


def test_mask_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not match"):
        D.symmetric_kl(torch.randn(2, 4, 5), torch.randn(2, 4, 5), torch.ones(2, 3))
