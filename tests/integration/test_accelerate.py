"""accelerate's Accelerator.prepare on a wrapped model (single process, CPU)."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch

import rxf
from tests.integration.conftest import bert_batch, grads, tiny_bert

accelerate = pytest.importorskip("accelerate")


@pytest.fixture
def fresh_state() -> Iterator[None]:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def _plain_step(model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    wrapped = rxf.wrap(model, eps=0.1)
    torch.manual_seed(2)
    wrapped(**batch).loss.backward()
    return grads(model)


def test_prepare_wrapped_model_and_optimizer(fresh_state: None) -> None:
    model, batch = tiny_bert(), bert_batch(batch=8)
    expected = _plain_step(copy.deepcopy(model), batch)
    accelerator = accelerate.Accelerator(cpu=True)
    wrapped = rxf.wrap(model, eps=0.1)
    prepared, opt = accelerator.prepare(wrapped, torch.optim.SGD(wrapped.parameters(), lr=0.1))
    torch.manual_seed(2)
    out = prepared(**batch)
    accelerator.backward(out.loss)
    for name, grad in grads(model).items():
        torch.testing.assert_close(grad, expected[name], msg=name)
    opt.step()
    assert accelerator.unwrap_model(prepared) is wrapped
    assert rxf.unwrap(accelerator.unwrap_model(prepared)) is model
    assert prepared.last_stats["mode"] == "two_pass"


def test_prepare_with_bf16_mixed_precision(fresh_state: None) -> None:
    model, batch = tiny_bert(), bert_batch(batch=8)
    expected = _plain_step(copy.deepcopy(model), batch)
    accelerator = accelerate.Accelerator(cpu=True, mixed_precision="bf16")
    prepared = accelerator.prepare(rxf.wrap(model, eps=0.1))
    torch.manual_seed(2)
    with accelerator.autocast():
        out = prepared(**batch)
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert torch.isfinite(out.loss)
    accelerator.backward(out.loss)
    got = torch.cat([g.flatten() for g in grads(model).values()])
    ref = torch.cat([g.flatten() for g in expected.values()])
    assert ((got - ref).norm() / ref.norm()).item() < 0.05
    assert not torch.equal(got, ref)  # bf16 really ran
