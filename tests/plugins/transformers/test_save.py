"""Acceptance 5: save_pretrained / from_pretrained round trips, with R4F baked in."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils import parametrize

import rxf

from .conftest import make_batch, make_model, transformers


def one_step(wrapped: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.05)
    wrapped.train()
    wrapped(**batch).loss.backward()
    optimizer.step()


def test_unwrapped_r4f_model_reloads_into_identical_logits(tmp_path) -> None:
    batch = make_batch("roberta")
    wrapped = rxf.wrap(make_model("roberta"), eps=0.1, spectral_norm_head=True)
    one_step(wrapped, batch)
    with torch.no_grad():
        wrapped(**batch)  # a training forward: one power-iteration step refreshes u, v
    wrapped.eval()
    with torch.no_grad():
        expected_logits = wrapped(**batch).logits
        normalized = wrapped.module.classifier.out_proj.weight.clone()  # W / sigma

    plain = rxf.unwrap(wrapped)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    plain.save_pretrained(tmp_path)
    reloaded = transformers.RobertaForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        logits = reloaded(**batch).logits
    torch.testing.assert_close(logits, expected_logits, atol=1e-6, rtol=0)
    baked = reloaded.classifier.out_proj.weight
    assert torch.equal(baked, normalized)
    # the baked weight is the normalized one: its largest singular value is 1
    assert abs(torch.linalg.matrix_norm(baked, ord=2).item() - 1.0) < 0.05


def test_save_pretrained_through_the_wrapper_keeps_the_inner_keys(tmp_path) -> None:
    batch = make_batch("gpt2")
    model = make_model("gpt2")
    wrapped = rxf.wrap(model, eps=0.1)
    one_step(wrapped, batch)
    # the inner model's keys; the tied lm_head.weight once, under its first name
    # (transformer.wte.weight), as save_pretrained stores it: safetensors accepts the dict
    keys = wrapped.state_dict().keys()
    assert set(model.state_dict()) - set(keys) == {"lm_head.weight"}
    assert list(keys) == [k for k in model.state_dict() if k != "lm_head.weight"]
    from safetensors.torch import save_file

    save_file(wrapped.state_dict(), str(tmp_path / "state.safetensors"))
    rxf.wrap(make_model("gpt2", seed=1), eps=0.1).load_state_dict(wrapped.state_dict())
    wrapped.save_pretrained(tmp_path)  # forwarded to the inner model
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    wrapped.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(**batch).logits, wrapped(**batch).logits, atol=1e-6, rtol=0
        )


def trainer_for(model: torch.nn.Module, name: str, tmp_path) -> Any:
    from rxf_transformers import RXFTrainer

    from .test_trainer import rows

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        save_strategy="steps",
        save_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    return RXFTrainer(model=model, args=args, train_dataset=rows(name))


def eval_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_rxf_trainer_checkpoints_a_tied_model_with_save_pretrained(tmp_path) -> None:
    wrapped = rxf.wrap(make_model("gpt2"), eps=0.1)
    trainer_for(wrapped, "gpt2", tmp_path).train()  # the plain Trainer fails here: tied weights
    checkpoint = tmp_path / "checkpoint-2"
    assert (checkpoint / "config.json").is_file()
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(checkpoint)
    batch = make_batch("gpt2")
    torch.testing.assert_close(eval_logits(reloaded, batch), eval_logits(wrapped, batch))


def test_rxf_trainer_final_save_bakes_r4f_and_checkpoints_keep_it(tmp_path) -> None:
    from safetensors import safe_open

    wrapped = rxf.wrap(make_model("roberta"), eps=0.1, spectral_norm_head=True)
    trainer = trainer_for(wrapped, "roberta", tmp_path)
    trainer.train()
    with safe_open(str(tmp_path / "checkpoint-2" / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert "classifier.out_proj.parametrizations.weight.original" in saved  # resumable
    trainer.save_model(str(tmp_path / "final"))
    reloaded, info = transformers.RobertaForSequenceClassification.from_pretrained(
        tmp_path / "final", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    batch = make_batch("roberta")
    torch.testing.assert_close(eval_logits(reloaded, batch), eval_logits(wrapped, batch))
    assert parametrize.is_parametrized(wrapped.module.classifier.out_proj)  # still R4F


def test_save_pretrained_through_the_wrapper_bakes_r4f(tmp_path) -> None:
    batch = make_batch("roberta")
    wrapped = rxf.wrap(make_model("roberta"), eps=0.1, spectral_norm_head=True)
    one_step(wrapped, batch)
    wrapped.save_pretrained(tmp_path)  # no unwrap: the wrapper bakes into the saved file
    assert parametrize.is_parametrized(wrapped.module.classifier.out_proj)  # model unchanged
    reloaded = transformers.RobertaForSequenceClassification.from_pretrained(tmp_path).eval()
    wrapped.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(**batch).logits, wrapped(**batch).logits, atol=1e-6, rtol=0
        )
