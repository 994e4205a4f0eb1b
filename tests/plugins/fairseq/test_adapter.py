"""The fairseq adapter on fairseq-shaped tiny models: discovery, noise point, masks, R4F."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import rxf_fairseq
import torch
from torch import nn
from torch.nn.utils import parametrize

import rxf
from rxf.errors import RXFError

from .models import (
    DIM,
    EOS,
    PAD,
    BARTModel,
    RobertaModel,
    TransformerLanguageModel,
    classification_sample,
    seq2seq_sample,
)

HEAD = "sentence_classification_head"


def roberta_head() -> tuple[nn.Module, dict[str, Any]]:
    model = RobertaModel()
    model.register_classification_head(HEAD, 3)
    sample = classification_sample([0, 1, 2, 1])
    return model, {**sample["net_input"], "classification_head_name": HEAD}


def roberta_mlm() -> tuple[nn.Module, dict[str, Any]]:
    return RobertaModel(), dict(classification_sample([0, 1, 2])["net_input"])


def bart_seq2seq() -> tuple[nn.Module, dict[str, Any]]:
    return BARTModel(), dict(seq2seq_sample()["net_input"])


def bart_head() -> tuple[nn.Module, dict[str, Any]]:
    model = BARTModel()
    model.register_classification_head(HEAD, 2)
    src = classification_sample([0, 1, 1])["net_input"]["src_tokens"]
    prev = torch.cat([torch.full_like(src[:, :1], EOS), src[:, :-1]], 1)
    prev = prev.masked_fill(src.eq(PAD), PAD)
    inputs = {
        "src_tokens": src,
        "src_lengths": src.ne(PAD).sum(1),
        "prev_output_tokens": prev,
        "classification_head_name": HEAD,
    }
    return model, inputs


def language_model() -> tuple[nn.Module, dict[str, Any]]:
    return TransformerLanguageModel(), {"src_tokens": seq2seq_sample()["target"]}


FAMILIES: dict[str, tuple[Callable[[], tuple[nn.Module, dict[str, Any]]], str]] = {
    "roberta-head": (roberta_head, "encoder.sentence_encoder.embed_tokens"),
    "roberta-mlm": (roberta_mlm, "encoder.sentence_encoder.embed_tokens"),
    "bart-seq2seq": (bart_seq2seq, "encoder.embed_tokens"),
    "bart-head": (bart_head, "encoder.embed_tokens"),
    "transformer-lm": (language_model, "decoder.embed_tokens"),
}


def build(family: str) -> tuple[nn.Module, dict[str, Any]]:
    torch.manual_seed(0)
    return FAMILIES[family][0]()


@pytest.mark.parametrize("family", FAMILIES)
def test_discovery_and_the_term_at_eps_1_and_0(family: str) -> None:
    model, inputs = build(family)
    expected = FAMILIES[family][1]
    text = str(rxf.explain(model))
    assert f"{expected} (Embedding, by fairseq)" in text
    wrapped = rxf.wrap(model, eps=1.0)
    assert wrapped.rxf_targets.embedding is model.get_submodule(expected)
    torch.manual_seed(1)
    output = wrapped(**inputs)
    assert wrapped.last_stats["divergence"] > 1e-4
    reference = model(**inputs)  # dropout is off: the clean pass is reproducible
    assert output[0] is not reference[0] and torch.equal(output[0], reference[0])
    silent = rxf.wrap(rxf.unwrap(wrapped), eps=0.0)
    silent(**inputs)
    assert silent.last_stats["divergence"] <= 1e-7


def test_noise_reaches_roberta_through_the_hook() -> None:
    """The released criterion passes token_embeddings=..., which RoBERTa swallows; the hook
    perturbs the lookup itself, so the first layer sees the noise."""
    model, inputs = build("roberta-head")
    seen: list[torch.Tensor] = []
    model.encoder.sentence_encoder.layers[0].register_forward_pre_hook(
        lambda m, args: seen.append(args[0].detach())
    )
    rxf.wrap(model, eps=0.5)(**inputs)
    assert len(seen) == 2 and not torch.allclose(seen[0], seen[1])


def test_noise_is_added_before_embed_scale() -> None:
    model, inputs = build("bart-seq2seq")
    encoder = model.encoder
    assert encoder.embed_scale == pytest.approx(DIM**0.5)
    seen: list[torch.Tensor] = []
    encoder.layernorm_embedding.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    eps = 0.01
    wrapped = rxf.wrap(model, eps=eps)
    torch.manual_seed(3)
    wrapped(**inputs)
    # the clean pass draws no random numbers (no dropout); the noisy pass draws U(-eps, eps)
    torch.manual_seed(3)
    z = torch.empty(*inputs["src_tokens"].shape, DIM).uniform_(-eps, eps)
    clean, noisy = seen
    torch.testing.assert_close(noisy - clean, encoder.embed_scale * z, atol=1e-6, rtol=0)
    assert (noisy - clean).abs().max() > 2 * eps  # scaled like the embedding (√16 = 4)


@pytest.mark.parametrize("share", [True, False])
def test_only_the_encoder_lookup_is_perturbed(share: bool) -> None:
    torch.manual_seed(0)
    model = BARTModel(share=share)
    inputs = seq2seq_sample()["net_input"]
    assert (model.encoder.embed_tokens is model.decoder.embed_tokens) is share
    enc: list[torch.Tensor] = []
    dec: list[torch.Tensor] = []
    model.encoder.layernorm_embedding.register_forward_pre_hook(lambda m, a: enc.append(a[0]))
    model.decoder.layernorm_embedding.register_forward_pre_hook(lambda m, a: dec.append(a[0]))
    wrapped = rxf.wrap(model, eps=0.5)
    wrapped(**inputs)
    assert not torch.allclose(enc[0], enc[1])
    assert torch.equal(dec[0], dec[1])
    assert wrapped.last_stats["divergence"] > 0


def test_token_mask_follows_target_padding_and_gives_the_masked_mean() -> None:
    model, inputs = build("bart-seq2seq")
    target = seq2seq_sample()["target"]
    assert bool(target.eq(PAD).any())
    logits: list[torch.Tensor] = []
    model.decoder.output_projection.register_forward_hook(
        lambda m, a, out: logits.append(out.detach())
    )
    wrapped = rxf.wrap(model, eps=0.3)
    wrapped(**inputs)
    mask = rxf_fairseq.rxf_token_mask(model, rxf.ForwardInputs((), inputs), logits[0])
    assert torch.equal(mask, target.ne(PAD))
    log_p, log_q = logits[0].log_softmax(-1), logits[1].log_softmax(-1)
    per_token = (log_p.exp() * (log_p - log_q) + log_q.exp() * (log_q - log_p)).sum(-1)
    expected = per_token[target.ne(PAD)].mean()
    assert wrapped.last_stats["positions"] == int(target.ne(PAD).sum())
    assert wrapped.last_stats["divergence"] == pytest.approx(float(expected), rel=1e-5)
    reference = rxf.wrap(rxf.unwrap(wrapped), eps=0.3, token_reduction="reference")
    logits.clear()
    reference(**inputs)
    log_p, log_q = logits[0].log_softmax(-1), logits[1].log_softmax(-1)
    per_token = (log_p.exp() * (log_p - log_q) + log_q.exp() * (log_q - log_p)).sum(-1)
    assert reference.last_stats["divergence"] == pytest.approx(
        float(per_token.sum() / target.shape[0]), rel=1e-5
    )


def test_input_mask_is_the_source_padding() -> None:
    model, inputs = build("bart-seq2seq")
    mask = rxf_fairseq.rxf_input_mask(model, rxf.ForwardInputs((), inputs))
    assert torch.equal(mask, inputs["src_tokens"].ne(PAD))
    wrapped = rxf.wrap(model, eps=5.0, noise_type="neftune")
    wrapped(**inputs)
    assert wrapped.last_stats["divergence"] > 0


def test_other_models_are_left_to_other_plugins() -> None:
    net = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    assert not rxf_fairseq.is_fairseq_style(net)
    assert rxf_fairseq.rxf_find_embedding(net) is None
    assert rxf_fairseq.rxf_find_head(net) is None


def test_head_choice_errors_name_the_fix() -> None:
    model, _ = build("roberta-head")
    model.register_classification_head("mnli", 3)
    with pytest.raises(RXFError, match=r"RXFConfig\(head='classification_heads.mnli'\)"):
        rxf.wrap(model, spectral_norm_head=True)
    wrapped = rxf.wrap(model, spectral_norm_head=True, head="classification_heads.mnli")
    assert wrapped.rxf_targets.spectral_linears == [model.classification_heads["mnli"].out_proj]
    seq2seq, _ = build("bart-seq2seq")
    with pytest.raises(RXFError, match="no classification_heads registered"):
        rxf.wrap(seq2seq, spectral_norm_head=True)


@pytest.mark.parametrize("family", ["roberta-head", "bart-head"])
def test_r4f_on_out_proj_after_steps_and_unwrap(family: str) -> None:
    model, inputs = build(family)
    keys = set(model.state_dict())
    wrapped = rxf.wrap(model, eps=0.1, spectral_norm_head=True)
    head = model.classification_heads[HEAD]
    assert "by fairseq" in str(rxf.explain(wrapped)).split("head (R4F)")[1]
    assert wrapped.rxf_targets.spectral_linears == [head.out_proj]
    assert not parametrize.is_parametrized(head.dense)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.5)
    labels = torch.arange(inputs["src_tokens"].shape[0]) % 2
    for _ in range(5):
        logits, _ = wrapped(**inputs)
        loss = nn.functional.cross_entropy(logits, labels) + wrapped.consistency_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    wrapped(**inputs)  # one more power iteration for the weight in use now
    sigma = torch.linalg.matrix_norm(head.out_proj.weight.detach(), ord=2)
    assert float(sigma) == pytest.approx(1.0, abs=1e-3)
    plain = rxf.unwrap(wrapped)
    assert type(head.out_proj) is nn.Linear and not parametrize.is_parametrized(head.out_proj)
    assert set(plain.state_dict()) == keys
    baked = torch.linalg.matrix_norm(head.out_proj.weight.detach(), ord=2)
    assert float(baked) == pytest.approx(1.0, abs=1e-3)


def test_importing_the_adapter_imports_no_framework() -> None:
    code = (
        "import sys, rxf_fairseq; bad = [m for m in ('fairseq', 'transformers', 'timm') "
        "if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
