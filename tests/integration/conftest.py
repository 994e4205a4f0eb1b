"""Tiny Hugging Face models built from configs (no downloads) and a fixed-noise plugin."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

import rxf

FIXED_NOISE = "test_fixed_noise"


def tiny_bert_config(**overrides: object) -> object:
    from transformers import BertConfig

    settings = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.2,
    )
    settings.update(overrides)
    return BertConfig(**settings)


def tiny_bert(seed: int = 0, **overrides: object) -> torch.nn.Module:
    """A 2-layer BERT sequence classifier, dropout off, weights from ``seed``."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(**overrides))


def bert_batch(batch: int = 4, tokens: int = 10, seed: int = 1) -> dict[str, Tensor]:
    """Token ids, an attention mask with padding on the first rows, class labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (batch, tokens), generator=g)
    mask = torch.ones_like(ids)
    mask[: batch // 2, tokens - 3 :] = 0
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.randint(0, 2, (batch,), generator=g),
    }


def fixed_noise(embeddings: Tensor, eps: float, mask: Tensor | None = None) -> Tensor:
    """U(-eps, eps) noise that depends only on the shape: the same for every call."""
    g = torch.Generator().manual_seed(1234)
    noise = torch.rand(embeddings.shape, generator=g) * 2 - 1
    return (noise * eps).to(embeddings.device)


class _FixedNoisePlugin:
    @rxf.hookimpl
    def rxf_register_noise_types(self) -> dict[str, object]:
        return {FIXED_NOISE: fixed_noise}


@pytest.fixture
def fixed_noise_type() -> Iterator[str]:
    """Registers the noise type ``test_fixed_noise`` for one test."""
    plugin = _FixedNoisePlugin()
    pm = rxf.plugin_manager()
    pm.register(plugin)
    try:
        yield FIXED_NOISE
    finally:
        pm.unregister(plugin)


def grads(model: torch.nn.Module) -> dict[str, Tensor]:
    """A copy of every parameter's gradient (zeros where none arrived), in float32."""
    return {
        name: (
            p.grad.detach().float().clone()
            if p.grad is not None
            else torch.zeros_like(p, dtype=torch.float32)
        )
        for name, p in model.named_parameters()
    }
