"""Mixed precision: autocast (+ GradScaler), half-precision models, the eps-resolution warning."""

from __future__ import annotations

import copy
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

import rxf
from tests.integration.conftest import bert_batch, tiny_bert

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
AUTOCAST_CASES = [
    pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
    pytest.param("cpu", torch.float16, id="cpu-fp16"),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=CUDA),
    pytest.param("cuda", torch.float16, id="cuda-fp16", marks=CUDA),
]


def _flat_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().float().flatten().cpu() for p in model.parameters()])


def _step(model, batch, device, dtype=None, mode="two_pass"):
    """One R3F step (eps=0.3, λ=5 so the term matters); fp16 goes through a GradScaler."""
    wrapped = rxf.wrap(model.to(device), eps=0.3, r3f_lambda=5.0, mode=mode)
    batch = {k: v.to(device) for k, v in batch.items()}
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10, enabled=dtype is torch.float16)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.0)
    torch.manual_seed(3)
    with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = wrapped(**batch)
    scaler.scale(out.loss).backward()
    scaler.unscale_(opt)
    return out, wrapped, _flat_grads(model)


@pytest.mark.parametrize(("device", "dtype"), AUTOCAST_CASES)
@pytest.mark.parametrize("mode", ["two_pass", "concat"])
def test_autocast_step_matches_float32(device: str, dtype: torch.dtype, mode: str) -> None:
    model, batch = tiny_bert(), bert_batch(batch=8, tokens=12)
    ref_out, ref, ref_grads = _step(copy.deepcopy(model), batch, device, mode=mode)
    out, wrapped, amp_grads = _step(model, batch, device, dtype, mode=mode)
    assert torch.isfinite(out.loss)
    assert out.logits.dtype == dtype  # the model really ran in half precision
    assert wrapped.last_stats["embedding_dtype"] == "torch.float32"  # lookup stays float32
    tol = 0.05 if dtype is torch.bfloat16 else 0.01
    assert out.loss.item() == pytest.approx(ref_out.loss.item(), rel=tol)
    # the divergence measures a small difference of two logit vectors, each rounded to the
    # autocast dtype: it gets twice the relative tolerance of the loss
    assert wrapped.consistency_loss.item() == pytest.approx(
        ref.consistency_loss.item(), rel=2 * tol
    )
    assert ref.consistency_loss.item() > 0.05  # the term is not negligible in this check
    assert ((amp_grads - ref_grads).norm() / ref_grads.norm()).item() < tol
    assert F.cosine_similarity(amp_grads, ref_grads, dim=0).item() > 1 - tol**2


def test_gradscaler_fp16_steps_train() -> None:
    model, batch = tiny_bert(), bert_batch(batch=8, tokens=12)
    wrapped = rxf.wrap(model, eps=0.1)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu")
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = wrapped(**batch).loss
        assert torch.isfinite(loss)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    assert scaler.get_scale() > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def _precision_warnings(model, batch, steps: int = 1, eps: float = 1e-5):
    wrapped = rxf.wrap(model, eps=eps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            wrapped(**batch).loss.backward()
    return wrapped, [w for w in caught if issubclass(w.category, rxf.RXFPrecisionWarning)]


@pytest.mark.parametrize(("dtype", "mantissa_bits"), [(torch.bfloat16, 7), (torch.float16, 10)])
def test_half_model_warns_once_with_the_right_numbers(
    dtype: torch.dtype, mantissa_bits: int
) -> None:
    model, batch = tiny_bert().to(dtype), bert_batch()
    _, caught = _precision_warnings(model, batch, steps=3)
    assert len(caught) == 1
    message = str(caught[0].message)
    # hand computation: RMS of the token-embedding output, spacing 2^floor(log2 rms) · 2^-bits
    emb = model.bert.embeddings.word_embeddings(batch["input_ids"]).float()
    rms = emb.pow(2).mean().sqrt().item()
    spacing = 2.0 ** math.floor(math.log2(rms)) * 2.0**-mantissa_bits
    assert spacing > 1e-5  # the premise: eps is below the resolution
    found = re.search(r"RMS \(([0-9.e+-]+): spacing ([0-9.e+-]+)\)", message)
    assert found, message
    assert float(found.group(1)) == pytest.approx(rms, rel=5e-3)
    assert float(found.group(2)) == pytest.approx(spacing, rel=5e-3)
    assert "eps=1e-05" in message and str(dtype) in message


def test_float32_does_not_warn_and_autocast_warns_below_its_dtypes_resolution() -> None:
    _, caught = _precision_warnings(tiny_bert(), bert_batch(), steps=2)
    assert caught == []
    # the embedding stays float32 under autocast, but the next bf16 layer rounds eps=1e-5
    # to its grid (this test said "autocast does not warn" before: the noise was lost)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, caught = _precision_warnings(tiny_bert(), bert_batch())
    assert len(caught) == 1 and "torch.autocast(torch.bfloat16)" in str(caught[0].message)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, caught = _precision_warnings(tiny_bert(), bert_batch(), eps=1e-2)
    assert caught == []


def test_eps_above_resolution_does_not_warn() -> None:
    _, caught = _precision_warnings(tiny_bert().to(torch.bfloat16), bert_batch(), eps=1e-2)
    assert caught == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_noise_to_signal_is_the_measured_ratio_after_the_cast(dtype: torch.dtype) -> None:
    model, batch, eps = tiny_bert().to(dtype), bert_batch(), 1e-4
    wrapped = rxf.wrap(model, eps=eps)
    torch.manual_seed(11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rxf.RXFPrecisionWarning)
        wrapped(**batch)
    # hand computation: the same uniform draw (dropout is off, so the clean pass draws nothing)
    emb = model.bert.embeddings.word_embeddings(batch["input_ids"]).detach()
    torch.manual_seed(11)
    z = torch.empty(emb.shape, dtype=torch.float32).uniform_(-eps, eps)
    noisy = (emb.float() + z).to(dtype).float()
    expected = (noisy - emb.float()).pow(2).mean().sqrt() / emb.float().pow(2).mean().sqrt()
    stats = wrapped.last_stats
    assert stats["embedding_dtype"] == str(dtype)
    assert stats["noise_to_signal"] == pytest.approx(expected.item(), rel=1e-5)
    nominal = (eps / math.sqrt(3)) / emb.float().pow(2).mean().sqrt().item()
    if dtype is torch.float32:
        assert stats["noise_to_signal"] == pytest.approx(nominal, rel=0.05)
    else:  # bf16 at eps=1e-4 < spacing: quantized, not the nominal ratio
        assert abs(stats["noise_to_signal"] - nominal) > 0.05 * nominal
