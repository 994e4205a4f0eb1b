"""Lightning: a LightningModule holding the wrapped model trains with the term in its loss
and round-trips through a Lightning checkpoint."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import rxf
from tests.integration.conftest import bert_batch, tiny_bert

L = pytest.importorskip("lightning", reason="Lightning is not installed (rxf[stacks])")


class Classifier(L.LightningModule):
    """The recipe of docs/stacks.md: wrap in ``__init__``, return ``.loss``."""

    def __init__(self, eps: float = 1e-5, r4f: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = rxf.wrap(tiny_bert(), eps=eps, spectral_norm_head=r4f)
        self.seen: list[dict[str, float]] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.model(**batch)
        stats = self.model.last_stats
        self.log("rxf_divergence", stats["divergence"])
        with torch.no_grad():  # the task loss alone, same weights, no noise
            task = self.model.module(**batch).loss.item()
        self.seen.append({"loss": out.loss.item(), "task": task, **stats})
        return out.loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> Any:
    batch = bert_batch(batch=8, seed=3)
    rows = [{k: v[i] for k, v in batch.items()} for i in range(8)]
    return torch.utils.data.DataLoader(rows, batch_size=4)


def _trainer(tmp_path: Any) -> Any:
    return L.Trainer(
        max_steps=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )


@pytest.mark.parametrize("r4f", [False, True], ids=["r3f", "r4f"])
def test_lightning_loss_includes_the_term_and_the_checkpoint_round_trips(
    tmp_path, r4f: bool
) -> None:
    module = Classifier(eps=0.5, r4f=r4f)
    trainer = _trainer(tmp_path)
    trainer.fit(module, _loader())
    assert len(module.seen) == 2
    for step in module.seen:
        assert step["mode"] == "two_pass" and step["noise_to_signal"] > 0  # the noise arrived
        assert step["consistency_loss"] > 1e-6
        assert step["loss"] == pytest.approx(step["task"] + step["consistency_loss"], rel=1e-5)
    assert "rxf_divergence" in trainer.logged_metrics

    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    restored = Classifier.load_from_checkpoint(path)
    batch = bert_batch(batch=4, seed=9)
    module.eval(), restored.eval()
    with torch.no_grad():
        expected, got = module.model(**batch).logits, restored.model(**batch).logits
        untrained = Classifier(r4f=r4f).eval().model(**batch).logits
    assert torch.equal(expected, got)
    assert not torch.allclose(expected, untrained)  # training moved the weights
    assert restored.model.rxf_config == module.model.rxf_config


def test_docs_recipe(tmp_path) -> None:
    from tests.integration.recipes import run_recipe

    ns = run_recipe("lightning", model=tiny_bert(), train_loader=_loader(), output_dir=tmp_path)
    assert ns["module"].model.last_stats["mode"] == "two_pass"
    assert (tmp_path / "last.ckpt").exists()
