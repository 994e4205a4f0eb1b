"""Tiny models for the core tests: built in code, no framework, no downloads."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class ClassificationHead(nn.Module):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(x)))


class TinyClassifier(nn.Module):
    """Token embedding -> + positions -> LayerNorm -> dropout -> mean pool -> head."""

    def __init__(self, vocab: int = 50, dim: int = 16, classes: int = 3, p: float = 0.0) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.embed_positions = nn.Embedding(32, dim)
        self.layer_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(p)
        self.encoder = nn.Linear(dim, dim)
        self.classifier = ClassificationHead(dim, classes)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed_tokens(input_ids) + self.embed_positions(positions)
        x = self.dropout(torch.relu(self.encoder(self.layer_norm(x))))
        logits = self.classifier(x.mean(1))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class TinyTagger(TinyClassifier):
    """Token-level logits (batch, tokens, classes), for token-level divergences."""

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        x = self.layer_norm(self.embed_tokens(input_ids))
        return {"logits": self.classifier(torch.relu(self.encoder(x)))}


@pytest.fixture
def tiny() -> TinyClassifier:
    torch.manual_seed(0)
    return TinyClassifier()


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(0, 50, (4, 7), generator=g),
        "labels": torch.randint(0, 3, (4,), generator=g),
    }
