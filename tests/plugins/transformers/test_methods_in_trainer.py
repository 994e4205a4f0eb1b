"""R-Drop and SMART under RXFTrainer when the Trainer computes the loss outside the model
(label smoothing, ``compute_loss_func``): R-Drop's task loss covers both dropout passes,
SMART's is R3F's; each checked against the formula written out here from the logits of
the passes the inner model ran."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from rxf_transformers import RXFTrainer
from torch import nn

import rxf

from .conftest import TEXT, make_batch, transformers
from .test_trainer import rows, step_logs, train

EPSILON = 0.1  # label smoothing


pytestmark = pytest.mark.usefixtures("one_thread")


def dropout_bert(seed: int = 0) -> nn.Module:
    """The tiny BERT classifier with dropout on (R-Drop's two passes differ by it)."""
    config = transformers.BertConfig(**TEXT, hidden_dropout_prob=0.2)
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(config).train()


def smoothed(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' label smoothing by hand: (1-ε)·NLL + ε·mean over classes of -log p."""
    logp = logits.float().log_softmax(-1)
    nll = -logp.gather(-1, labels[:, None]).mean()
    return (1 - EPSILON) * nll + EPSILON * (-logp).mean()


def symmetric_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    p, q = p_logits.float().log_softmax(-1), q_logits.float().log_softmax(-1)
    return ((p.exp() * (p - q)).sum(-1) + (q.exp() * (q - p)).sum(-1)).mean()


def passes_of(wrapped: rxf.RXFModel) -> tuple[list[torch.Tensor], Any]:
    logits: list[torch.Tensor] = []
    handle = wrapped.module.register_forward_hook(lambda m, a, out: logits.append(out.logits))
    return logits, handle


def trainer_for(wrapped: nn.Module, tmp_path: Any, **arguments: Any) -> Any:
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, **arguments
    )
    return RXFTrainer(model=wrapped, args=args)


def test_rdrop_with_label_smoothing_averages_both_smoothed_losses(tmp_path: Any) -> None:
    wrapped = rxf.wrap(dropout_bert(), rxf.RXFConfig.preset("rdrop", r3f_lambda=0.6))
    trainer = trainer_for(wrapped, tmp_path, label_smoothing_factor=EPSILON)
    batch = make_batch("bert", batch=4)
    logits, handle = passes_of(wrapped)
    loss = trainer.compute_loss(wrapped, dict(batch))
    handle.remove()
    assert len(logits) == 2 and not torch.allclose(logits[0], logits[1])
    labels = batch["labels"]
    term = 0.6 / 4 * symmetric_kl(logits[0], logits[1])  # (alpha/4)·KL_S
    expected = (smoothed(logits[0], labels) + smoothed(logits[1], labels)) / 2 + term
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    assert float(term.detach()) > 1e-6
    loss.backward()  # the second pass's task loss trains the model too
    assert wrapped.module.classifier.weight.grad is not None


def test_rdrop_with_compute_loss_func_averages_both_losses(tmp_path: Any) -> None:
    weights = torch.tensor([0.3, 1.7])

    def weighted(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> Any:
        return nn.functional.cross_entropy(outputs.logits.float(), labels, weight=weights)

    wrapped = rxf.wrap(dropout_bert(), rxf.RXFConfig.preset("rdrop"))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = RXFTrainer(model=wrapped, args=args, compute_loss_func=weighted)
    batch = make_batch("bert", batch=4)
    logits, handle = passes_of(wrapped)
    loss = trainer.compute_loss(wrapped, dict(batch))
    handle.remove()
    labels = batch["labels"]
    ce = [nn.functional.cross_entropy(x.float(), labels, weight=weights) for x in logits]
    expected = (ce[0] + ce[1]) / 2 + symmetric_kl(logits[0], logits[1]) / 4
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)


def test_smart_with_label_smoothing_is_the_clean_loss_plus_the_term(tmp_path: Any) -> None:
    config = rxf.RXFConfig.preset("smart", eps=0.05, smart_step_size=0.05, smart_init_std=0.01)
    wrapped = rxf.wrap(dropout_bert(), config)
    trainer = trainer_for(wrapped, tmp_path, label_smoothing_factor=EPSILON)
    batch = make_batch("bert", batch=4)
    logits, handle = passes_of(wrapped)
    loss = trainer.compute_loss(wrapped, dict(batch))
    handle.remove()
    assert len(logits) == 3  # clean, one ascent pass, the final pass
    term = symmetric_kl(logits[0], logits[2])  # lambda_s = 1, at the final perturbation
    expected = smoothed(logits[0], batch["labels"]) + term
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    assert float(term.detach()) > 1e-6


@pytest.mark.parametrize("preset", ["rdrop", "smart"])
def test_trainer_runs_rdrop_and_smart_with_label_smoothing(preset: str, tmp_path: Any) -> None:
    data = rows("bert")
    wrapped = rxf.wrap(dropout_bert(), rxf.RXFConfig.preset(preset))
    trainer = train(wrapped, data, tmp_path, RXFTrainer, label_smoothing_factor=EPSILON)
    logs = step_logs(trainer)
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(e["loss"])) for e in logs)
    assert logs[0]["rxf_consistency_loss"] > 0
    if preset == "smart":  # the perturbation's size, logged by RXFCallback
        assert 0 < logs[0]["rxf_perturbation_to_eps"] <= 1 + 1e-6
    assert trainer.evaluate(eval_dataset=data[:4])["eval_loss"] > 0
