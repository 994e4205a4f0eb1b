"""Acceptance 4: ``transformers.Trainer`` on wrapped tiny models, offline, two steps.

Dropout is off, so with the same seed the wrapped and the plain run see the same batches
and the same task loss: the logged losses differ by exactly the logged R3F term.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from rxf_transformers import RXFCallback, RXFTrainer

import rxf

from .conftest import make_batch, make_model, transformers


def rows(name: str, copies: int = 2) -> list[dict[str, torch.Tensor]]:
    """The tiny batch split into examples (plus an unused column the Trainer must drop)."""
    batch = make_batch(name, batch=4)
    examples = [{k: v[i] for k, v in batch.items()} for i in range(4)] * copies
    return [{**example, "idx": torch.tensor(i)} for i, example in enumerate(examples)]


def train(
    model: torch.nn.Module,
    data: list[dict[str, torch.Tensor]],
    tmp_path: Any,
    trainer_class: type = transformers.Trainer,
    callbacks: list[Any] | None = None,
    **arguments: Any,
) -> Any:
    settings = {
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "logging_steps": 1,
        "learning_rate": 1e-3,
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
    }
    args = transformers.TrainingArguments(output_dir=str(tmp_path), **{**settings, **arguments})
    trainer = trainer_class(model=model, args=args, train_dataset=data, callbacks=callbacks)
    trainer.train()
    return trainer


def step_logs(trainer: Any) -> list[dict[str, float]]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("name", ["bert", "t5"])
def test_trainer_loss_includes_the_term_and_the_callback_logs_it(name: str, tmp_path) -> None:
    data = rows(name)
    plain = step_logs(train(make_model(name), data, tmp_path / "plain"))
    wrapped = rxf.wrap(make_model(name), eps=0.5)
    logs = step_logs(train(wrapped, data, tmp_path / "rxf", callbacks=[RXFCallback()]))
    assert len(logs) == len(plain) == 2
    first, reference = logs[0], plain[0]
    assert first["rxf_consistency_loss"] > 1e-6
    assert first["loss"] > reference["loss"]
    assert first["loss"] - reference["loss"] == pytest.approx(
        first["rxf_consistency_loss"], rel=1e-3, abs=1e-6
    )
    assert first["rxf_divergence"] == pytest.approx(first["rxf_consistency_loss"])  # λ = 1
    assert first["rxf_noise_to_signal"] > 0
    assert {"rxf_divergence", "rxf_noise_to_signal"} <= set(logs[1])


def test_gradient_accumulation_logs_the_mean_over_micro_batches(tmp_path) -> None:
    data = rows("bert")
    arguments = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}
    plain = train(make_model("bert"), data, tmp_path / "plain", **arguments)
    wrapped = rxf.wrap(make_model("bert"), eps=0.5)
    trainer = train(wrapped, data, tmp_path / "rxf", RXFTrainer, **arguments)
    first, reference = step_logs(trainer)[0], step_logs(plain)[0]
    # the Trainer sums the micro-batch losses (divided by 2 unless the model takes
    # num_items_in_batch); the callback logs the mean term over the two forwards
    share = 1.0 if trainer.model_accepts_loss_kwargs else 0.5
    assert first["loss"] - reference["loss"] == pytest.approx(
        2 * share * first["rxf_consistency_loss"], rel=1e-3, abs=1e-6
    )


def test_rxf_trainer_keeps_r3f_under_label_smoothing(tmp_path) -> None:
    # the plain Trainer pops the labels, so the decoder inputs come with the data
    # (as DataCollatorForSeq2Seq(model=...) provides them)
    shift = make_model("t5")._shift_right
    data = [{**row, "decoder_input_ids": shift(row["labels"][None])[0]} for row in rows("t5")]
    smooth = {"label_smoothing_factor": 0.1}
    plain = train(make_model("t5"), data, tmp_path / "plain", **smooth)
    wrapped = rxf.wrap(make_model("t5"), eps=0.5)
    trainer = train(wrapped, data, tmp_path / "rxf", RXFTrainer, **smooth)
    first, reference = step_logs(trainer)[0], step_logs(plain)[0]
    assert first["rxf_consistency_loss"] > 1e-6
    assert first["loss"] - reference["loss"] == pytest.approx(
        first["rxf_consistency_loss"], rel=1e-3, abs=1e-6
    )
    assert isinstance(trainer.callback_handler.callbacks[0], RXFCallback)
    assert trainer.label_names == ["labels"]
    metrics = trainer.evaluate(eval_dataset=data[:4])
    assert metrics["eval_loss"] > 0


def test_plain_trainer_with_label_smoothing_is_refused(tmp_path) -> None:
    wrapped = rxf.wrap(make_model("t5"))
    with pytest.raises(rxf.RXFError, match="RXFTrainer"):
        train(wrapped, rows("t5"), tmp_path, callbacks=[RXFCallback()], label_smoothing_factor=0.1)


def test_callback_needs_a_wrapped_model(tmp_path) -> None:
    with pytest.raises(rxf.RXFError, match=r"rxf\.wrap"):
        train(make_model("bert"), rows("bert"), tmp_path, callbacks=[RXFCallback()])


def test_rxf_trainer_weighs_the_term_like_the_smoothed_loss_under_accumulation(tmp_path) -> None:
    wrapped = rxf.wrap(make_model("t5"), eps=0.5)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), label_smoothing_factor=0.1, report_to=[], use_cpu=True
    )
    trainer = RXFTrainer(model=wrapped, args=args)
    batch = make_batch("t5")
    counted = (batch["labels"] != -100).sum()
    torch.manual_seed(5)
    per_batch = trainer.compute_loss(wrapped, dict(batch))
    assert wrapped.last_stats["consistency_loss"] > 1e-6
    # half of an accumulated batch: the smoothed loss is a sum over twice as many tokens,
    # and the term must shrink with it, so the whole loss halves
    torch.manual_seed(5)
    half = trainer.compute_loss(wrapped, dict(batch), num_items_in_batch=2 * counted)
    torch.testing.assert_close(half, per_batch / 2, rtol=1e-5, atol=1e-7)


def fixed_noise(embeddings: torch.Tensor, eps: float, mask: Any = None) -> torch.Tensor:
    """The same vector eps * cos(0..d-1) on every token: no RNG involved."""
    pattern = eps * torch.cos(torch.arange(embeddings.shape[-1], dtype=torch.float32))
    return pattern.expand(embeddings.shape).clone()


class FixedNoise:
    """Noise that uses no RNG, so runs with different micro-batch splits see the same noise."""

    @rxf.hookimpl
    def rxf_register_noise_types(self) -> dict[str, Any]:
        return {"fixed": fixed_noise}


def test_rxf_trainer_keeps_lambda_independent_of_accumulation_for_causal_lms(tmp_path) -> None:
    plugin = FixedNoise()
    rxf.plugin_manager().register(plugin, name="fixed-noise")
    try:
        data, extra = rows("gpt2"), {}
        for steps in (1, 2):
            split = {
                "per_device_train_batch_size": 4 // steps,
                "gradient_accumulation_steps": steps,
            }
            plain = step_logs(train(make_model("gpt2"), data, tmp_path / f"p{steps}", **split))
            wrapped = rxf.wrap(make_model("gpt2"), eps=0.3, noise_type="fixed")
            logs = step_logs(train(wrapped, data, tmp_path / f"w{steps}", RXFTrainer, **split))
            extra[steps] = logs[0]["loss"] - plain[0]["loss"]
    finally:
        rxf.plugin_manager().unregister(plugin)
    # one batch of 4, or two micro-batches of 2: the same token-mean term on the same data
    assert extra[1] > 1e-4
    assert extra[2] == pytest.approx(extra[1], rel=1e-3)
