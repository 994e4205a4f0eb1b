"""PEFT / LoRA in both orders, R3F and R4F: the term is in the loss, the noise arrives, only
the adapter trains, and the saved adapter reloads into identical outputs.

* ``rxf.wrap(get_peft_model(model, config))`` (rxf outside, the recommended order): the
  adapter is a standard PEFT adapter (R4F's normalized head weight baked in) that loads onto
  a plain base model.
* ``get_peft_model(rxf.wrap(model), config)`` (rxf inside): the wrapper's parameter names
  are the inner model's, so the adapter loads onto a plain base too; with R4F it holds the
  head copy's parametrization and reloads onto a base wrapped the same way.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn.utils import parametrize

import rxf
from tests.plugins.transformers import conftest
from tests.plugins.transformers.conftest import make_model

peft = pytest.importorskip("peft", reason="PEFT is not installed (rxf[stacks])")


def lora(**extra: Any) -> Any:
    return peft.LoraConfig(
        task_type="SEQ_CLS", target_modules=["query", "value"], r=4, lora_alpha=8, **extra
    )


def train_steps(model: torch.nn.Module, wrapped: rxf.RXFModel, steps: int = 2) -> None:
    """SGD on the trainable parameters; checks loss = task + term and that noise arrived."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.5)
    for step in range(steps):
        batch = make_batch("bert", batch=4, length=7)
        out = model(**batch)
        with torch.no_grad():
            task = wrapped.module(**batch).loss
        stats = wrapped.last_stats
        assert stats["noise_to_signal"] > 0, "no noise reached the model"
        assert stats["consistency_loss"] > 1e-7, f"step {step}: no term"
        torch.testing.assert_close(out.loss, task + wrapped.consistency_loss.detach())
        opt.zero_grad()
        out.loss.backward()
        opt.step()


def assert_only_the_adapter_trained(model: torch.nn.Module) -> None:
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "modules_to_save" in n for n in names), names


def logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**make_batch("bert", batch=3, length=7, seed=7)).logits


def make_batch(name: str, batch: int, length: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """``conftest.make_batch`` with token ids drawn from ``seed``."""
    out = conftest.make_batch(name, batch=batch, length=length)
    g = torch.Generator().manual_seed(seed)
    out["input_ids"] = torch.randint(3, conftest.VOCAB, out["input_ids"].shape, generator=g)
    return out


def top_singular_value(weight: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(weight.detach().float(), ord=2))


@pytest.mark.parametrize("r4f", [False, True], ids=["r3f", "r4f"])
def test_rxf_outside_peft_saves_a_standard_adapter(tmp_path, r4f: bool) -> None:
    wrapped = rxf.wrap(get_peft(make_model("bert")), eps=0.5, spectral_norm_head=r4f)
    assert_only_the_adapter_trained(wrapped)
    train_steps(wrapped, wrapped)
    expected = logits(wrapped)
    wrapped.save_pretrained(tmp_path)

    reloaded = peft.PeftModel.from_pretrained(make_model("bert"), tmp_path)
    torch.testing.assert_close(logits(reloaded), expected, rtol=0, atol=1e-6)
    if r4f:  # the trained copy of the head was normalized, and is stored baked (W / sigma)
        head = reloaded.base_model.model.classifier.modules_to_save["default"]
        assert top_singular_value(head.weight) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("r4f", [False, True], ids=["r3f", "r4f"])
def test_peft_over_the_wrapper_saves_and_reloads_the_adapter(tmp_path, r4f: bool) -> None:
    wrapped = rxf.wrap(make_model("bert"), eps=0.5, spectral_norm_head=r4f)
    model = get_peft(wrapped)
    assert_only_the_adapter_trained(model)
    train_steps(model, wrapped)
    expected = logits(model)
    model.save_pretrained(tmp_path)

    saved = load_adapter_keys(tmp_path)
    assert sum("lora_" in k for k in saved) == 8  # 2 layers x (query, value) x (A, B)
    base = rxf.wrap(make_model("bert"), eps=0.5, spectral_norm_head=r4f)
    reloaded = peft.PeftModel.from_pretrained(base, tmp_path)
    torch.testing.assert_close(logits(reloaded), expected, rtol=0, atol=1e-6)
    if not r4f:  # the wrapper's names are the inner model's: the adapter fits a plain base
        plain = peft.PeftModel.from_pretrained(make_model("bert"), tmp_path)
        torch.testing.assert_close(logits(plain), expected, rtol=0, atol=1e-6)
    if r4f:  # R4F acts on the head that trains (PEFT's copy), not only the frozen original
        trained = base.module.classifier.modules_to_save["default"]
        assert parametrize.is_parametrized(trained, "weight")
        assert top_singular_value(trained.weight) == pytest.approx(1.0, abs=0.02)
        plain = rxf.unwrap(base)  # bakes every normalized copy: no parametrization is left
        assert not any(parametrize.is_parametrized(m) for m in plain.modules())
        torch.testing.assert_close(logits(reloaded), expected, rtol=0, atol=1e-6)


def get_peft(model: torch.nn.Module) -> Any:
    return peft.get_peft_model(model, lora())


def load_adapter_keys(path: Any) -> list[str]:
    from safetensors.torch import load_file

    return list(load_file(str(path / "adapter_model.safetensors")))


def test_docs_recipe(tmp_path) -> None:
    from tests.integration.recipes import run_recipe

    batch = make_batch("bert", batch=4, length=7)
    ns = run_recipe(
        "peft",
        model=make_model("bert"),
        base_model=make_model("bert"),
        batch=batch,
        output_dir=str(tmp_path),
    )
    assert ns["model"].last_stats["noise_to_signal"] > 0
    torch.testing.assert_close(logits(ns["reloaded"]), logits(ns["model"]), rtol=0, atol=1e-6)


def test_trainer_with_peft_over_the_wrapper_logs_the_term(tmp_path) -> None:
    from rxf_transformers import RXFCallback

    from tests.plugins.transformers.test_trainer import rows, train

    model = get_peft(rxf.wrap(make_model("bert"), eps=0.5))
    trainer = train(model, rows("bert"), tmp_path, callbacks=[RXFCallback()])
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert logs[0]["rxf_consistency_loss"] > 0 and logs[0]["rxf_noise_to_signal"] > 0
