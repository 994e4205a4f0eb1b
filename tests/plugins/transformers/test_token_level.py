"""Acceptance 3: token-level divergences of seq2seq models and causal LMs, by hand.

The noisy pass is recomputed independently of rxf's hook (``inputs_embeds`` = lookup +
the recorded noise), the symmetric KL is written out in float64, and the positions that
count are listed by hand from the labels.
"""

from __future__ import annotations

import pytest
import torch
from rxf_transformers.masks import shifted_label_mask

import rxf

from .conftest import FAMILIES, make_batch, make_model


def hand_symmetric_kl(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """KL(P‖Q) + KL(Q‖P) per position, straight from the definition, in float64."""
    p, q = clean.double().softmax(-1), noisy.double().softmax(-1)
    return (p * (p.log() - q.log())).sum(-1) + (q * (q.log() - p.log())).sum(-1)


def hand_positions(name: str, labels: torch.Tensor) -> torch.Tensor:
    """Which logits positions count, listed one by one from the labels."""
    batch, length = labels.shape
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for b in range(batch):
        for t in range(length):
            if FAMILIES[name].kind == "causal":  # logits t predict labels t + 1
                mask[b, t] = t + 1 < length and labels[b, t + 1].item() != -100
            else:
                mask[b, t] = labels[b, t].item() != -100
    return mask


@pytest.mark.parametrize("reduction", ["mean", "reference"])
@pytest.mark.parametrize("name", ["bart", "t5", "gpt2", "llama"])
def test_token_level_divergence_equals_the_hand_computation(
    name: str, reduction: str, noise_recorder
) -> None:
    batch, eps = make_batch(name), 0.5
    model = make_model(name)
    wrapped = rxf.wrap(
        model, eps=eps, noise_type="recorded_uniform", token_reduction=reduction, r3f_lambda=0.7
    )
    out = wrapped(**batch)
    term = wrapped.consistency_loss
    (noise,) = noise_recorder.samples

    inner = rxf.unwrap(wrapped)
    with torch.no_grad():
        clean = inner(**batch).logits
        embeds = inner.get_input_embeddings()(batch["input_ids"]) + noise
        rest = {k: v for k, v in batch.items() if k != "input_ids"}
        noisy = inner(inputs_embeds=embeds, **rest).logits
    per_position = hand_symmetric_kl(clean, noisy)
    labels = batch["labels"]
    if reduction == "mean":
        positions = hand_positions(name, labels)
        assert positions.sum() < positions.numel()  # padding / prompt really are left out
        expected = per_position[positions].sum() / positions.sum()
    else:  # the reference: every position, padding included, over the batch size
        expected = per_position.sum() / labels.shape[0]
    assert expected > 1e-6
    torch.testing.assert_close(term.double(), 0.7 * expected, rtol=2e-4, atol=1e-9)
    assert out.loss.requires_grad


def test_causal_mask_follows_the_label_shift() -> None:
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, 8, 9, 10]])
    assert shifted_label_mask(labels).tolist() == [
        [False, True, True, False, False],
        [True, True, True, True, False],
    ]
    model = make_model("gpt2")
    inputs = rxf.ForwardInputs((), {"labels": labels})
    logits = torch.zeros(2, 5, 3)
    from rxf_transformers.masks import token_mask

    assert torch.equal(token_mask(model, inputs, logits), shifted_label_mask(labels))
    shifted = torch.tensor([[1, -100, 2, -100, -100], [3, 4, 5, 6, -100]])
    with_shift = rxf.ForwardInputs((), {"labels": labels, "shift_labels": shifted})
    assert torch.equal(token_mask(model, with_shift, logits), shifted != -100)
    # logits_to_keep=2: the logits are the last two positions
    assert token_mask(model, inputs, logits[:, -2:]).tolist() == [[False, False], [True, False]]


def test_seq2seq_mask_never_uses_the_source_attention_mask() -> None:
    from rxf_transformers.masks import token_mask

    model = make_model("t5")
    source_mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    logits = torch.zeros(2, 3, 4)
    no_labels = rxf.ForwardInputs((), {"attention_mask": source_mask})
    assert token_mask(model, no_labels, logits).all()
    decoder_mask = torch.tensor([[1, 0, 0], [1, 1, 0]])
    with_decoder = rxf.ForwardInputs(
        (), {"attention_mask": source_mask, "decoder_attention_mask": decoder_mask}
    )
    assert torch.equal(token_mask(model, with_decoder, logits), decoder_mask.bool())
