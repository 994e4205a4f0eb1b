"""Hugging Face gradient checkpointing under rxf (single process; DDP in test_ddp.py)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import rxf
from tests.integration.conftest import bert_batch, grads, tiny_bert


def _step(model: torch.nn.Module, batch: dict, mode: str) -> tuple[float, dict]:
    wrapped = rxf.wrap(model, eps=0.1, r3f_lambda=2.0, mode=mode)
    torch.manual_seed(4)
    out = wrapped(**batch)
    out.loss.backward()
    return out.loss.item(), grads(model)


@pytest.mark.parametrize("mode", ["two_pass", "concat"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_model_gives_the_same_step(mode: str, reentrant: bool) -> None:
    model, batch = tiny_bert(), bert_batch(batch=6)
    ref_loss, ref_grads = _step(copy.deepcopy(model), batch, mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # renamed in transformers 5
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": reentrant}
        )
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    loss, ckpt_grads = _step(model, batch, mode)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for name, grad in ckpt_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-7, msg=name)
