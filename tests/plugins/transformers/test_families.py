"""Acceptance 1 and 2 for every family: no paths needed, noise arrives, and lands exactly
on the token-embedding output (not after the LayerNorm, never on a seq2seq decoder)."""

from __future__ import annotations

import pytest
import torch

import rxf

from .conftest import FAMILIES, InputCapture, make_batch, make_model


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_wrap_needs_no_path_and_noise_reaches_the_model(name: str) -> None:
    family, batch = FAMILIES[name], make_batch(name)
    model = make_model(name)
    explained = rxf.explain(model)
    assert explained.embedding == family.embedding
    assert explained.embedding_plugin == "transformers"
    assert explained.logits.split(": ", 1)[1].endswith("rxf.defaults")  # output.logits
    if family.head is not None:
        assert rxf.explain(model, spectral_norm_head=True).head_plugin == "transformers"

    wrapped = rxf.wrap(model, eps=1.0)
    wrapped(**batch)
    # the fairseq RoBERTa bug (noise swallowed by the model) would leave this at 0
    assert wrapped.last_stats["divergence"] > 1e-6
    assert wrapped.last_stats["mode"] == "two_pass"

    quiet = rxf.wrap(rxf.unwrap(wrapped), eps=0.0)
    quiet(**batch)
    assert quiet.last_stats["divergence"] <= 1e-7


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_first_norm_input_differs_by_exactly_the_noise(name: str, noise_recorder) -> None:
    family, batch, eps = FAMILIES[name], make_batch(name), 0.5
    model = make_model(name)
    paths = [family.first_norm] + ([family.decoder_norm] if family.decoder_norm else [])
    capture = InputCapture(model, *paths)
    wrapped = rxf.wrap(model, eps=eps, noise_type="recorded_uniform")
    wrapped(**batch)
    capture.remove()

    (noise,) = noise_recorder.samples
    clean, noisy = capture.inputs[family.first_norm]
    diff = (noisy - clean)[:, family.skip_first :]
    # exactly the sample, not normalized; and for HF's scaled lookups (mBART here) not
    # multiplied by embed_scale: the noise lands on the lookup module's (scaled) output
    torch.testing.assert_close(diff, noise, atol=2e-6, rtol=0)
    if name == "mbart":
        assert model.get_encoder().embed_tokens.embed_scale == pytest.approx(32**0.5)
    assert eps * 0.9 < noise.abs().max() <= eps
    if family.skip_first:
        assert torch.equal(noisy[:, : family.skip_first], clean[:, : family.skip_first])
    if family.decoder_norm:
        decoder_clean, decoder_noisy = capture.inputs[family.decoder_norm]
        assert torch.equal(decoder_clean, decoder_noisy)


def test_normal_noise_lands_the_same_way(noise_recorder) -> None:
    model = make_model("bert")
    capture = InputCapture(model, "bert.embeddings.LayerNorm")
    wrapped = rxf.wrap(model, eps=0.3, noise_type="recorded_normal")
    wrapped(**make_batch("bert"))
    clean, noisy = capture.inputs["bert.embeddings.LayerNorm"]
    (noise,) = noise_recorder.samples
    torch.testing.assert_close(noisy - clean, noise, atol=2e-6, rtol=0)
    assert 0.25 < noise.std() < 0.35


@pytest.mark.parametrize("name", ["bart", "t5"])
def test_one_shared_table_gives_noise_to_the_encoder_only(name: str, noise_recorder) -> None:
    family, batch = FAMILIES[name], make_batch(name)
    model = make_model(name)
    model.set_input_embeddings(model.get_input_embeddings())  # one module for both sides
    shared = model.get_encoder().embed_tokens
    assert model.get_decoder().embed_tokens is shared
    assert rxf.explain(model).embedding_module == type(shared).__name__

    capture = InputCapture(model, family.first_norm, family.decoder_norm)
    wrapped = rxf.wrap(model, eps=0.5, noise_type="recorded_uniform")
    wrapped(**batch)
    capture.remove()
    clean, noisy = capture.inputs[family.first_norm]
    torch.testing.assert_close(noisy - clean, noise_recorder.samples[0], atol=2e-6, rtol=0)
    decoder_clean, decoder_noisy = capture.inputs[family.decoder_norm]
    assert torch.equal(decoder_clean, decoder_noisy)
    assert len(noise_recorder.samples) == 1


def test_regression_head_gets_a_real_valued_divergence() -> None:
    model = make_model("roberta", num_labels=1)
    batch = make_batch("roberta", regression=True)
    wrapped = rxf.wrap(model, eps=0.5, noise_type="uniform")
    torch.manual_seed(3)
    out = wrapped(**batch)
    stats = wrapped.last_stats
    assert stats["divergence_name"] == "mse"
    # reference: rerun the clean pass and the noisy pass by hand with the same noise
    inner = rxf.unwrap(wrapped)
    torch.manual_seed(3)
    embeds = inner.get_input_embeddings()(batch["input_ids"])
    noise = torch.empty(embeds.shape).uniform_(-0.5, 0.5)
    clean = inner(**batch).logits
    hand_batch = {k: v for k, v in batch.items() if k != "input_ids"}
    noisy = inner(inputs_embeds=embeds + noise, **hand_batch).logits
    expected = ((clean - noisy) ** 2).sum(-1).mean()
    assert stats["divergence"] > 0
    torch.testing.assert_close(
        torch.tensor(stats["divergence"]), expected.detach(), rtol=1e-4, atol=1e-7
    )
    assert out.logits.shape == (3, 1)
