"""Acceptance 5: save_pretrained / from_pretrained round trips, with R4F baked in."""

from __future__ import annotations

import torch
from torch.nn.utils import parametrize

import rxf

from .conftest import make_batch, make_model, transformers


def one_step(wrapped: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.05)
    wrapped.train()
    wrapped(**batch).loss.backward()
    optimizer.step()


def test_unwrapped_r4f_model_reloads_into_identical_logits(tmp_path) -> None:
    batch = make_batch("roberta")
    wrapped = rxf.wrap(make_model("roberta"), eps=0.1, spectral_norm_head=True)
    one_step(wrapped, batch)
    with torch.no_grad():
        wrapped(**batch)  # a training forward: one power-iteration step refreshes u, v
    wrapped.eval()
    with torch.no_grad():
        expected_logits = wrapped(**batch).logits
        normalized = wrapped.module.classifier.out_proj.weight.clone()  # W / sigma

    plain = rxf.unwrap(wrapped)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    plain.save_pretrained(tmp_path)
    reloaded = transformers.RobertaForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        logits = reloaded(**batch).logits
    torch.testing.assert_close(logits, expected_logits, atol=1e-6, rtol=0)
    baked = reloaded.classifier.out_proj.weight
    assert torch.equal(baked, normalized)
    # the baked weight is the normalized one: its largest singular value is 1
    assert abs(torch.linalg.matrix_norm(baked, ord=2).item() - 1.0) < 0.05


def test_save_pretrained_through_the_wrapper_keeps_the_inner_keys(tmp_path) -> None:
    batch = make_batch("gpt2")
    model = make_model("gpt2")
    wrapped = rxf.wrap(model, eps=0.1)
    one_step(wrapped, batch)
    assert wrapped.state_dict().keys() == model.state_dict().keys()
    wrapped.save_pretrained(tmp_path)  # forwarded to the inner model
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    wrapped.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(**batch).logits, wrapped(**batch).logits, atol=1e-6, rtol=0
        )
