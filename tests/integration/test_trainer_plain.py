"""The plain ``transformers.Trainer`` with the wrapped model and nothing else changed:
``eval_loss``, checkpoints, ``load_best_model_at_end`` and ``resume_from_checkpoint``, on a
classifier and on a tied-weight causal LM (GPT-2)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import rxf
from tests.plugins.transformers.conftest import make_model, transformers
from tests.plugins.transformers.test_trainer import rows


def run(model: torch.nn.Module, name: str, out: Any, resume: Any = None) -> Any:
    args = transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        logging_steps=1,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=rows(name), eval_dataset=rows(name, copies=1)
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_plain_trainer_evaluates_checkpoints_and_resumes(tmp_path, name: str) -> None:
    wrapped = rxf.wrap(make_model(name), eps=0.5)
    trainer = run(wrapped, name, tmp_path / "full")
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert len(evals) == 2  # the wrapper's class signature shows the inner model's labels
    assert trainer.state.best_model_checkpoint is not None  # load_best_model_at_end ran
    assert wrapped.last_stats["mode"] == "eval"

    resumed = rxf.wrap(make_model(name), eps=0.5)
    run(resumed, name, tmp_path / "resumed", resume=tmp_path / "full" / "checkpoint-2")
    expected, got = wrapped.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:  # same best weights, reached through a checkpoint round trip
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)
    start = make_model(name).state_dict()
    inner = rxf.unwrap(resumed).state_dict()
    assert max((inner[k] - start[k]).abs().max().item() for k in start) > 1e-3


def test_docs_recipe(tmp_path) -> None:
    from tests.integration.recipes import run_recipe

    ns = run_recipe(
        "trainer",
        model=make_model("gpt2"),
        train_dataset=rows("gpt2"),
        eval_dataset=rows("gpt2", copies=1),
        output_dir=str(tmp_path),
    )
    history = ns["trainer"].state.log_history
    assert any("eval_loss" in e for e in history)
    assert any("rxf_divergence" in e for e in history)
    assert ns["trainer"].state.best_model_checkpoint is not None


def test_callback_stops_when_the_first_step_bypassed_rxf(tmp_path) -> None:
    from rxf_transformers import RXFCallback

    class Bypassing(transformers.Trainer):  # calls the inner model: no noise, no term
        def compute_loss(self, model: Any, inputs: Any, **kwargs: Any) -> Any:
            return model.module(**inputs).loss

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = Bypassing(
        model=rxf.wrap(make_model("bert"), eps=0.5),
        args=args,
        train_dataset=rows("bert"),
        callbacks=[RXFCallback()],
    )
    with pytest.raises(rxf.RXFError, match="no training forward of the first step"):
        trainer.train()
    assert trainer.state.global_step == 1


def test_mixed_precision_trainer_with_the_callback(tmp_path) -> None:
    # accelerate replaces the wrapper's forward with its autocast / fp32-output wrappers,
    # which call rxf's forward: the callback must not take them for a bypass
    from rxf_transformers import RXFCallback

    from tests.plugins.transformers.test_trainer import train

    wrapped = rxf.wrap(make_model("bert"), eps=0.5)
    trainer = train(wrapped, rows("bert"), tmp_path, callbacks=[RXFCallback()], bf16=True)
    assert "forward" in vars(wrapped)  # accelerate's wrapper is in place
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert logs[0]["rxf_consistency_loss"] > 0 and logs[0]["rxf_noise_to_signal"] > 0
