"""The reference criteria against formulas written out here, on the logits of both passes.

The logits of the clean and the noisy pass are captured with a forward hook on the layer
that produces them, then every number the criterion returns is recomputed from them.
"""

from __future__ import annotations

import math

import pytest
import torch
from rxf_fairseq import (
    LabelSmoothedCrossEntropyR3F,
    SentencePredictionR3F,
    label_smoothed_nll_loss,
    reference_config,
)
from torch import Tensor, nn

import rxf
from rxf.errors import RXFError

from .models import PAD, BARTModel, RobertaModel, classification_sample, seq2seq_sample

HEAD = "sentence_classification_head"


def symmetric_kl_rows(clean: Tensor, noisy: Tensor) -> list[float]:
    """KL(P‖Q) + KL(Q‖P) per row, from softmax probabilities, one class at a time."""
    values = []
    for a, b in zip(
        clean.reshape(-1, clean.shape[-1]).tolist(),
        noisy.reshape(-1, noisy.shape[-1]).tolist(),
        strict=True,
    ):
        za, zb = sum(math.exp(v) for v in a), sum(math.exp(v) for v in b)
        p, q = [math.exp(v) / za for v in a], [math.exp(v) / zb for v in b]
        values.append(
            sum(
                pi * math.log(pi / qi) + qi * math.log(qi / pi) for pi, qi in zip(p, q, strict=True)
            )
        )
    return values


def nll_rows(logits: Tensor, targets: Tensor) -> list[float]:
    rows = []
    for row, t in zip(logits.tolist(), targets.tolist(), strict=True):
        rows.append(math.log(sum(math.exp(v) for v in row)) - row[t])
    return rows


def capture(module: nn.Module) -> list[Tensor]:
    seen: list[Tensor] = []
    module.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    return seen


def roberta(classes: int) -> RobertaModel:
    torch.manual_seed(0)
    model = RobertaModel()
    model.register_classification_head(HEAD, classes)
    return model


def test_label_smoothed_nll_loss_matches_the_formula() -> None:
    torch.manual_seed(0)
    lprobs = torch.randn(6, 5).log_softmax(-1)
    target = torch.tensor([0, 3, PAD, 4, PAD, 2])
    eps = 0.1
    loss, nll = label_smoothed_nll_loss(lprobs, target, eps, ignore_index=PAD)
    exp_loss = exp_nll = 0.0
    for row, t in zip(lprobs.tolist(), target.tolist(), strict=True):
        if t == PAD:
            continue
        exp_nll += -row[t]
        # smoothing mass eps spread over the V-1 other classes, 1-eps on the target
        exp_loss += -(1 - eps) * row[t] - eps / 4 * sum(v for i, v in enumerate(row) if i != t)
    assert float(nll) == pytest.approx(exp_nll, rel=1e-6)
    assert float(loss.detach()) == pytest.approx(exp_loss, rel=1e-6)
    unmasked, _ = label_smoothed_nll_loss(lprobs, target, eps)
    assert float(unmasked) > float(loss)


def test_sentence_prediction_classification_is_the_reference_sum() -> None:
    model = roberta(3)
    logits = capture(model.classification_heads[HEAD].out_proj)
    sample = classification_sample([0, 2, 1, 1])
    wrapped = rxf.wrap(model, reference_config("sentence_prediction_r3f", eps=0.5, r3f_lambda=0.7))
    loss, sample_size, log = SentencePredictionR3F(HEAD)(wrapped, sample)
    clean, noisy = logits
    targets = sample["target"]
    nll = sum(nll_rows(clean, targets))
    kl = sum(symmetric_kl_rows(clean, noisy))
    assert kl > 1e-3
    assert sample_size == 4 and log["sample_size"] == 4 and log["nsentences"] == 4
    assert float(loss.detach()) == pytest.approx(nll + 0.7 * kl, rel=1e-5)
    assert log["loss"] == pytest.approx(nll + 0.7 * kl, rel=1e-5)
    assert log["nll_loss"] == pytest.approx(nll, rel=1e-5)
    assert log["symm_kl"] == pytest.approx(kl, rel=1e-5)
    assert log["ntokens"] == int(sample["net_input"]["src_tokens"].ne(PAD).sum())
    assert log["ncorrect"] == sum(int(r.argmax() == t) for r, t in zip(clean, targets, strict=True))
    loss.backward()
    assert model.classification_heads[HEAD].out_proj.weight.grad is not None


def test_eval_mode_has_no_term() -> None:
    model = roberta(3)
    logits = capture(model.classification_heads[HEAD].out_proj)
    sample = classification_sample([0, 2, 1])
    wrapped = rxf.wrap(model, eps=0.5).eval()
    loss, _, log = SentencePredictionR3F(HEAD)(wrapped, sample)
    assert len(logits) == 1
    assert log["symm_kl"] == 0.0
    assert float(loss.detach()) == pytest.approx(
        sum(nll_rows(logits[0], sample["target"])), rel=1e-5
    )


@pytest.mark.parametrize("consistency", [True, False])
def test_sentence_prediction_regression(consistency: bool) -> None:
    model = roberta(1)
    outputs = capture(model.classification_heads[HEAD].out_proj)
    sample = classification_sample([0.5, -1.0, 2.0, 0.0])
    wrapped = rxf.wrap(model, eps=0.5, r3f_lambda=2.0)
    criterion = SentencePredictionR3F(
        HEAD, regression_target=True, regression_consistency=consistency
    )
    loss, sample_size, log = criterion(wrapped, sample)
    clean, noisy = (o.reshape(-1).tolist() for o in outputs)
    squared = sum((c - y) ** 2 for c, y in zip(clean, sample["target"].tolist(), strict=True))
    term = sum((c - n) ** 2 for c, n in zip(clean, noisy, strict=True))
    assert term > 1e-6 and sample_size == 4 and "ncorrect" not in log
    assert log["nll_loss"] == pytest.approx(squared, rel=1e-5)
    if consistency:  # rxf: λ · Σ_i (ŷ_i - ŷ'_i)²
        assert float(loss.detach()) == pytest.approx(squared + 2.0 * term, rel=1e-5)
        assert log["symm_kl"] == pytest.approx(term, rel=1e-5)
    else:  # reference: the term is dropped
        assert float(loss.detach()) == pytest.approx(squared, rel=1e-5)
        assert log["symm_kl"] == 0.0


def test_reference_kl_on_a_one_output_head_is_identically_zero() -> None:
    """What the reference computes for regression: KL between softmaxes over one output."""
    clean, noisy = torch.tensor([[0.3], [-2.0]]), torch.tensor([[5.0], [1.0]])
    assert symmetric_kl_rows(clean, noisy) == [0.0, 0.0]


@pytest.mark.parametrize("reduction", ["reference", "mean"])
@pytest.mark.parametrize("sentence_avg", [False, True])
def test_label_smoothed_cross_entropy_r3f(reduction: str, sentence_avg: bool) -> None:
    torch.manual_seed(0)
    model = BARTModel()
    logits = capture(model.decoder.output_projection)
    sample = seq2seq_sample()
    cfg = reference_config(
        "label_smoothed_cross_entropy_r3f", eps=0.3, r3f_lambda=0.5, token_reduction=reduction
    )
    assert cfg.noise_type == "normal" and not cfg.detach_noisy_embedding
    wrapped = rxf.wrap(model, cfg)
    criterion = LabelSmoothedCrossEntropyR3F(label_smoothing=0.1, sentence_avg=sentence_avg)
    loss, sample_size, log = criterion(wrapped, sample)
    clean, noisy = logits
    target = sample["target"]
    batch, length, vocab = clean.shape
    ls_sum = nll_sum = 0.0
    lprobs = clean.log_softmax(-1)
    for b in range(batch):
        for t in range(length):
            y = int(target[b, t])
            if y == PAD:
                continue
            row = lprobs[b, t].tolist()
            nll_sum += -row[y]
            ls_sum += -(1 - 0.1 - 0.1 / (vocab - 1)) * row[y] - 0.1 / (vocab - 1) * sum(row)
    kls = torch.tensor(symmetric_kl_rows(clean, noisy)).view(batch, length)
    if reduction == "reference":  # every position, padding too, per sentence
        divergence = float(kls.sum()) / batch
    else:
        divergence = float(kls[target.ne(PAD)].mean())
    ntokens = int(target.ne(PAD).sum())
    expected_size = batch if sentence_avg else ntokens
    assert sample_size == expected_size == log["sample_size"]
    assert log["ntokens"] == ntokens and log["nsentences"] == batch
    assert log["nll_loss"] == pytest.approx(nll_sum, rel=1e-5)
    assert log["symm_kl"] == pytest.approx(divergence * expected_size, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(
        ls_sum + 0.5 * divergence * expected_size, rel=1e-5
    )
    loss.backward()  # the noisy pass is not detached: its gradient reaches the table
    assert model.encoder.embed_tokens.weight.grad is not None


def test_criteria_need_a_wrapped_model_and_a_known_head() -> None:
    model = roberta(3)
    sample = classification_sample([0, 1])
    with pytest.raises(RXFError, match=r"rxf.wrap\(model\)"):
        SentencePredictionR3F(HEAD)(model, sample)
    with pytest.raises(RXFError, match=r"no classification head 'mnli' \(has: " + HEAD):
        SentencePredictionR3F("mnli")(rxf.wrap(model), sample)
    with pytest.raises(RXFError, match="padding_idx"):
        LabelSmoothedCrossEntropyR3F()(rxf.wrap(model), sample)
    with pytest.raises(ValueError, match="criterion must be one of"):
        reference_config("cross_entropy")  # type: ignore[arg-type]


def test_logging_without_reduce_keeps_tensors() -> None:
    wrapped = rxf.wrap(roberta(3), eps=0.5)
    _, _, log = SentencePredictionR3F(HEAD)(wrapped, classification_sample([0, 1]), reduce=False)
    assert isinstance(log["loss"], Tensor) and isinstance(log["symm_kl"], Tensor)
