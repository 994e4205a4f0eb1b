"""The concat mode: one doubled-batch forward, exactly equal to the two-pass mode."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rxf
from tests.integration.conftest import bert_batch, grads, tiny_bert, tiny_bert_config


class PooledNet(nn.Module):
    """Embedding -> optional BatchNorm -> mean pool -> linear; returns (logits, extra)."""

    def __init__(self, batch_norm: bool = False) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(50, 8)
        self.norm = nn.BatchNorm1d(8) if batch_norm else nn.LayerNorm(8)
        self.classifier = nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x = self.embed_tokens(input_ids).mean(1)
        return self.classifier(self.norm(x)), {"pooled": x}


def _run(model: nn.Module, batch: dict, **config: object):
    wrapped = rxf.wrap(model, **config)
    torch.manual_seed(5)
    out = wrapped(**batch)
    loss = out.loss if hasattr(out, "loss") else wrapped.consistency_loss
    loss.backward()
    return out, wrapped, grads(model)


def _assert_same_step(model: nn.Module, batch: dict, **config: object) -> None:
    ref_out, ref, ref_grads = _run(copy.deepcopy(model), batch, mode="two_pass", **config)
    out, wrapped, cat_grads = _run(model, batch, mode="concat", **config)
    assert wrapped.last_stats["mode"] == "concat"
    assert wrapped.consistency_loss.item() > 0
    torch.testing.assert_close(wrapped.consistency_loss, ref.consistency_loss, rtol=1e-5, atol=1e-8)
    ref_logits = rxf.plugin_manager().hook.rxf_extract_logits(model=model, output=ref_out)
    logits = rxf.plugin_manager().hook.rxf_extract_logits(model=model, output=out)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-6)
    if hasattr(ref_out, "loss"):
        torch.testing.assert_close(out.loss, ref_out.loss, rtol=1e-5, atol=1e-7)
    assert ref_grads.keys() == cat_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(cat_grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert wrapped.last_stats["noise_to_signal"] == pytest.approx(
        ref.last_stats["noise_to_signal"], rel=1e-5
    )


@pytest.mark.parametrize("detach", [True, False])
def test_concat_equals_two_pass_sequence_classifier(fixed_noise_type: str, detach: bool) -> None:
    _assert_same_step(
        tiny_bert(),
        bert_batch(),
        eps=0.1,
        r3f_lambda=2.0,
        noise_type=fixed_noise_type,
        detach_noisy_embedding=detach,
    )


def test_concat_equals_two_pass_token_level(fixed_noise_type: str) -> None:
    from transformers import BertForTokenClassification

    torch.manual_seed(0)
    model = BertForTokenClassification(tiny_bert_config(num_labels=5))
    batch = bert_batch(tokens=8)
    labels = torch.randint(0, 5, (4, 8))
    labels[batch["attention_mask"] == 0] = -100
    batch["labels"] = labels
    _assert_same_step(model, batch, eps=0.1, noise_type=fixed_noise_type)


def test_concat_equals_two_pass_tuple_output_without_labels(fixed_noise_type: str) -> None:
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(0, 50, (6, 5))}
    _assert_same_step(PooledNet(), batch, eps=0.5, noise_type=fixed_noise_type)


def test_concat_equals_two_pass_with_neftune_noise() -> None:
    # the real sampler and torch's RNG: dropout is off, so both modes draw the same noise
    _assert_same_step(tiny_bert(), bert_batch(), eps=5.0, noise_type="neftune")


def test_concat_loss_is_the_clean_batch_loss() -> None:
    model, batch = tiny_bert(), bert_batch(batch=6)
    plain_logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    wrapped = rxf.wrap(model, eps=0.1, mode="concat")
    out = wrapped(**batch)
    assert out.logits.shape == (6, 2)
    torch.testing.assert_close(out.logits, plain_logits)
    expected = F.cross_entropy(plain_logits, batch["labels"]) + wrapped.consistency_loss
    torch.testing.assert_close(out.loss, expected)


def test_concat_returns_the_clean_half_of_every_output() -> None:
    model, batch = tiny_bert(), bert_batch(batch=3)
    out = rxf.wrap(model, mode="concat")(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == 3
    assert all(h.shape[0] == 3 for h in out.hidden_states)
    plain = model(**batch, output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[-1], plain.hidden_states[-1])


def test_concat_refuses_batchnorm_in_training_mode() -> None:
    batch = {"input_ids": torch.randint(0, 50, (4, 5))}
    wrapped = rxf.wrap(PooledNet(batch_norm=True), mode="concat")
    with pytest.raises(rxf.RXFError, match=r"norm \(BatchNorm1d\).*two_pass"):
        wrapped(**batch)


def test_concat_accepts_batchnorm_in_eval_mode(fixed_noise_type: str) -> None:
    torch.manual_seed(0)
    model = PooledNet(batch_norm=True)
    model.norm.eval()  # frozen statistics: no coupling between the examples
    _assert_same_step(
        model, {"input_ids": torch.randint(0, 50, (4, 5))}, eps=0.5, noise_type=fixed_noise_type
    )


def test_concat_refuses_float_labels() -> None:
    model = tiny_bert(num_labels=1)
    batch = bert_batch()
    batch["labels"] = torch.randn(4)
    with pytest.raises(rxf.RXFError, match="floating-point labels"):
        rxf.wrap(model, mode="concat")(**batch)


class AlwaysLoss(PooledNet):
    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor) -> dict:
        logits, _ = super().forward(input_ids)
        return {"logits": logits, "loss": F.cross_entropy(logits, targets)}


def test_concat_refuses_a_loss_without_labels_keyword() -> None:
    batch = {"input_ids": torch.randint(0, 50, (4, 5)), "targets": torch.tensor([0, 1, 2, 0])}
    with pytest.raises(rxf.RXFError, match="no `labels=` keyword"):
        rxf.wrap(AlwaysLoss(), mode="concat")(**batch)


def test_concat_eval_and_noise_only_run_one_plain_batch() -> None:
    model, batch = tiny_bert(), bert_batch()
    wrapped = rxf.wrap(model, mode="concat", r3f_lambda=0.0)
    assert wrapped(**batch).logits.shape == (4, 2)
    assert wrapped.last_stats["mode"] == "noise_only"
    wrapped = rxf.wrap(rxf.unwrap(wrapped), mode="concat").eval()
    assert wrapped(**batch).logits.shape == (4, 2)
    assert wrapped.last_stats["mode"] == "eval"


def test_noise_only_pass_trains_the_embedding() -> None:
    # λ=0 runs one noisy pass and nothing else: detaching it would freeze the embedding
    model, batch = tiny_bert(), bert_batch()
    wrapped = rxf.wrap(model, eps=0.1, r3f_lambda=0.0)  # detach_noisy_embedding=True default
    wrapped(**batch).loss.backward()
    table = model.bert.embeddings.word_embeddings.weight
    assert table.grad is not None
    seen = batch["input_ids"][batch["attention_mask"].bool()].unique()  # tokens that count
    assert table.grad[seen].abs().sum(-1).gt(0).all()


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=100,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def _t5() -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=100,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    return T5ForConditionalGeneration(config)


@pytest.mark.parametrize("build", [_gpt2, _t5], ids=["gpt2-causal-lm", "t5-seq2seq"])
def test_concat_equals_two_pass_generation_models(fixed_noise_type: str, build) -> None:
    # T5 builds its decoder inputs from labels: rxf must build them from the real labels
    torch.manual_seed(0)
    model = build()
    ids = torch.randint(1, 100, (3, 8))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    labels = ids.clone()
    labels[0, 5:] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    _assert_same_step(model, batch, eps=0.1, noise_type=fixed_noise_type)


class Seq2SeqWithoutPrepare(PooledNet):
    config = type("Config", (), {"is_encoder_decoder": True})()

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        return {"logits": super().forward(input_ids)[0]}


def test_concat_refuses_unknown_seq2seq_without_decoder_inputs() -> None:
    batch = {"input_ids": torch.randint(0, 50, (2, 5)), "labels": torch.randint(0, 3, (2, 4))}
    with pytest.raises(rxf.RXFError, match="decoder_input_ids"):
        rxf.wrap(Seq2SeqWithoutPrepare(), mode="concat")(**batch)
