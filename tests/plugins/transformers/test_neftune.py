"""NEFTune through rxf: noise-only mode (r3f_lambda=0) on a padded causal-LM batch."""

from __future__ import annotations

import math

import pytest
import torch

import rxf

from .conftest import FAMILIES, InputCapture, make_batch, make_model


@pytest.mark.parametrize("padded", [True, False])
def test_neftune_noise_is_scaled_by_the_real_length(padded: bool) -> None:
    name, alpha = "llama", 5.0
    batch = make_batch(name)
    if not padded:
        del batch["attention_mask"]
    model = make_model(name)
    norm = FAMILIES[name].first_norm
    capture = InputCapture(model, norm)
    wrapped = rxf.wrap(model, noise_type="neftune", eps=alpha, r3f_lambda=0.0)
    torch.manual_seed(11)
    out = wrapped(**batch)
    assert wrapped.last_stats["mode"] == "noise_only"
    assert float(wrapped.consistency_loss) == 0.0
    with torch.no_grad():
        wrapped.module(**batch)  # the inner model: a clean pass, no hook
    capture.remove()
    noisy, clean = capture.inputs[norm]  # one noisy pass only, then the clean one

    rows, length, dim = noisy.shape
    real = [7, 5, 7] if padded else [length] * rows  # row 1 ends in two padding tokens
    torch.manual_seed(11)
    unit = torch.empty(rows, length, dim).uniform_(-1.0, 1.0)
    scale = torch.tensor([alpha / math.sqrt(n * dim) for n in real]).view(rows, 1, 1)
    torch.testing.assert_close(noisy - clean, unit * scale, atol=2e-6, rtol=0)
    assert out.loss.requires_grad
