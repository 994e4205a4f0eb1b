"""The sentence-transformers adapter's hooks answer only for SentenceTransformer models, and
RXFLoss validates its arguments before any forward."""

from __future__ import annotations

import pytest
import torch
from rxf_sentence_transformers import RXFLoss, rxf_extract_logits, rxf_find_embedding
from torch import nn

import rxf


class NotASentenceTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids)


class FakeLoss(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


def test_hooks_leave_other_models_to_other_plugins() -> None:
    model = NotASentenceTransformer()
    assert rxf_find_embedding(model) is None
    assert rxf_extract_logits(model, torch.zeros(2, 3)) is None


def test_entry_point_is_registered() -> None:
    names = {name for name, _ in rxf.plugin_manager().list_name_plugin()}
    assert "sentence_transformers" in names


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "cosine"}, "target must be"),
        ({"spectral_norm_head": True}, "has none"),
    ],
)
def test_rxf_loss_refuses_bad_settings(kwargs: dict[str, object], message: str) -> None:
    loss = FakeLoss(NotASentenceTransformer())
    with pytest.raises(rxf.RXFError, match=message):
        RXFLoss(loss, embedding="embed", **kwargs)
