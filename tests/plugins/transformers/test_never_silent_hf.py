"""Issue 9 on Hugging Face models: NEFTune hooks from the Trainer are refused, packed
batches get NEFTune's per-example scale, ``return_dict=False`` losses carry the term."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from rxf_transformers import RXFCallback, RXFTrainer

import rxf

from .conftest import make_batch, make_model, transformers
from .test_trainer import rows, train


@pytest.mark.parametrize("how", ["plain", "callback", "rxf_trainer"])
def test_trainer_neftune_is_refused(how: str, tmp_path) -> None:
    wrapped = rxf.wrap(make_model("llama"), eps=0.1)
    kwargs: dict[str, Any] = {"neftune_noise_alpha": 5.0}
    if how == "callback":
        kwargs["callbacks"] = [RXFCallback()]
    if how == "rxf_trainer":
        kwargs["trainer_class"] = RXFTrainer
    message = "another forward hook" if how == "plain" else "neftune_noise_alpha"
    with pytest.raises(rxf.RXFError, match=message):
        train(wrapped, rows("llama"), tmp_path, **kwargs)


@pytest.mark.parametrize("source", ["position_ids", "cu_seq_lens_q"])
def test_neftune_on_a_flattened_batch_is_scaled_per_example(source: str) -> None:
    collator = transformers.DataCollatorWithFlattening(
        return_flash_attn_kwargs=source == "cu_seq_lens_q",
        return_position_ids=source == "position_ids",
    )
    batch = collator([{"input_ids": [1, 2, 3, 4]}, {"input_ids": list(range(5, 13))}])
    batch.pop("labels")
    model = make_model("llama")
    embedding = model.get_input_embeddings()
    seen: list[torch.Tensor] = []
    embedding.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    wrapped = rxf.wrap(model, noise_type="neftune", eps=5.0, r3f_lambda=0.0)
    first_layer = model.model.layers[0]
    inputs: list[torch.Tensor] = []
    first_layer.register_forward_pre_hook(
        lambda m, a, kw: inputs.append((a[0] if a else kw["hidden_states"]).detach()),
        with_kwargs=True,
    )
    torch.manual_seed(3)
    wrapped(**batch)
    assert wrapped.last_stats["perturbed_calls"] == 1
    dim = embedding.embedding_dim
    torch.manual_seed(3)
    unit = torch.empty(1, 12, dim).uniform_(-1.0, 1.0)
    scale = torch.tensor([5.0 / math.sqrt(4 * dim)] * 4 + [5.0 / math.sqrt(8 * dim)] * 8)
    torch.testing.assert_close(inputs[0] - seen[-1], unit * scale.view(1, 12, 1), atol=2e-6, rtol=0)


@pytest.mark.parametrize("name", ["bert", "gpt2", "t5"])
def test_return_dict_false_loss_carries_the_term(name: str) -> None:
    model, batch = make_model(name), make_batch(name)
    wrapped = rxf.wrap(model, eps=0.5)
    torch.manual_seed(0)
    as_dict = wrapped(**batch)
    term = wrapped.consistency_loss.detach()
    torch.manual_seed(0)
    as_tuple = wrapped(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple) and term.item() > 1e-6
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(wrapped.consistency_loss.detach(), term)
    with torch.no_grad():
        task = rxf.unwrap(wrapped).eval()(**batch).loss  # dropout is off: the clean task loss
    torch.testing.assert_close(as_tuple[0].detach(), task + term, rtol=1e-5, atol=1e-6)
    assert F.mse_loss(as_tuple[0], as_tuple[0]).item() == 0.0


def test_a_trainer_that_pops_the_labels_gets_the_unused_term_warning(tmp_path) -> None:
    # label smoothing makes the plain Trainer pop labels: the model returns no loss, the
    # Trainer smooths the logits itself, and the R3F term would silently reach nothing
    wrapped = rxf.wrap(make_model("bert"), eps=0.1)
    with pytest.warns(rxf.RXFUnusedTermWarning, match="RXFTrainer"):
        train(wrapped, rows("bert"), tmp_path, label_smoothing_factor=0.1)
