"""Tiny Hugging Face models of every family the adapter covers, built from configs offline.

``make_model(name)`` builds a seeded model with every dropout off (so two training-mode
passes differ only by rxf's noise); ``make_batch(name)`` a matching padded batch.
``noise_recorder`` registers noise types that keep each sample they draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

import rxf
from rxf.noise import normal_noise, uniform_noise

transformers = pytest.importorskip("transformers")

VOCAB = 99
TEXT = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "max_position_embeddings": 64,
}
SEQ2SEQ = {
    "vocab_size": VOCAB,
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 37,
    "decoder_ffn_dim": 37,
    "max_position_embeddings": 64,
}


@dataclass(frozen=True)
class Family:
    """One model family: how to build it and where rxf must hook it."""

    model_class: str
    config_class: str
    config: dict[str, Any]
    kind: str  # "classifier" | "seq2seq" | "causal" | "vision"
    embedding: str  # the path the adapter must choose
    first_norm: str  # the module whose input must differ by exactly the noise
    head: str | None = None  # the Linear R4F normalizes (None: R4F refused)
    decoder_norm: str | None = None  # seq2seq: the decoder's first norm (must stay clean)
    skip_first: int = 0  # leading positions the noise does not reach (ViT's [CLS])
    extra: dict[str, Any] = field(default_factory=dict)


def _roberta_like(prefix: str, model: str, config: str, **cfg: Any) -> Family:
    return Family(
        model,
        config,
        {**TEXT, **cfg},
        "classifier",
        f"{prefix}.embeddings.word_embeddings",
        f"{prefix}.embeddings.LayerNorm",
        "classifier.out_proj",
    )


FAMILIES: dict[str, Family] = {
    "bert": Family(
        "BertForSequenceClassification",
        "BertConfig",
        TEXT,
        "classifier",
        "bert.embeddings.word_embeddings",
        "bert.embeddings.LayerNorm",
        "classifier",
    ),
    "roberta": _roberta_like(
        "roberta", "RobertaForSequenceClassification", "RobertaConfig", pad_token_id=1
    ),
    "xlm-roberta": _roberta_like(
        "roberta", "XLMRobertaForSequenceClassification", "XLMRobertaConfig", pad_token_id=1
    ),
    "deberta-v2": Family(
        "DebertaV2ForSequenceClassification",
        "DebertaV2Config",
        TEXT,
        "classifier",
        "deberta.embeddings.word_embeddings",
        "deberta.embeddings.LayerNorm",
        "classifier",
    ),
    "distilbert": Family(
        "DistilBertForSequenceClassification",
        "DistilBertConfig",
        {
            "vocab_size": VOCAB,
            "dim": 32,
            "n_layers": 2,
            "n_heads": 2,
            "hidden_dim": 37,
            "max_position_embeddings": 64,
        },
        "classifier",
        "distilbert.embeddings.word_embeddings",
        "distilbert.embeddings.LayerNorm",
        "classifier",
    ),
    "electra": _roberta_like(
        "electra", "ElectraForSequenceClassification", "ElectraConfig", embedding_size=16
    ),
    "albert": Family(
        "AlbertForSequenceClassification",
        "AlbertConfig",
        {**TEXT, "embedding_size": 16},
        "classifier",
        "albert.embeddings.word_embeddings",
        "albert.embeddings.LayerNorm",
        "classifier",
    ),
    "mpnet": _roberta_like("mpnet", "MPNetForSequenceClassification", "MPNetConfig"),
    "gpt2-classifier": Family(
        "GPT2ForSequenceClassification",
        "GPT2Config",
        {
            "vocab_size": VOCAB,
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 2,
            "n_positions": 64,
            "bos_token_id": 1,
            "eos_token_id": 1,
            "pad_token_id": 0,
        },
        "classifier",
        "transformer.wte",
        "transformer.h.0.ln_1",
        "score",
    ),
    "bart": Family(
        "BartForConditionalGeneration",
        "BartConfig",
        {**SEQ2SEQ, "init_std": 0.2},
        "seq2seq",
        "model.encoder.embed_tokens",
        "model.encoder.layernorm_embedding",
        decoder_norm="model.decoder.layernorm_embedding",
    ),
    "mbart": Family(
        "MBartForConditionalGeneration",
        "MBartConfig",
        {**SEQ2SEQ, "scale_embedding": True, "init_std": 0.2},
        "seq2seq",
        "model.encoder.embed_tokens",
        "model.encoder.layernorm_embedding",
        decoder_norm="model.decoder.layernorm_embedding",
    ),
    "t5": Family(
        "T5ForConditionalGeneration",
        "T5Config",
        {
            "vocab_size": VOCAB,
            "d_model": 32,
            "d_kv": 16,
            "d_ff": 37,
            "num_layers": 1,
            "num_heads": 2,
            "decoder_start_token_id": 0,
            "pad_token_id": 0,
        },
        "seq2seq",
        "encoder.embed_tokens",
        "encoder.block.0.layer.0.layer_norm",
        decoder_norm="decoder.block.0.layer.0.layer_norm",
    ),
    "gpt2": Family(
        "GPT2LMHeadModel",
        "GPT2Config",
        {
            "vocab_size": VOCAB,
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 2,
            "n_positions": 64,
            "bos_token_id": 1,
            "eos_token_id": 1,
        },
        "causal",
        "transformer.wte",
        "transformer.h.0.ln_1",
    ),
    "llama": Family(
        "LlamaForCausalLM",
        "LlamaConfig",
        {**TEXT, "num_key_value_heads": 2, "bos_token_id": 1, "eos_token_id": 2},
        "causal",
        "model.embed_tokens",
        "model.layers.0.input_layernorm",
    ),
    "vit": Family(
        "ViTForImageClassification",
        "ViTConfig",
        {
            "image_size": 16,
            "patch_size": 8,
            "num_channels": 3,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 37,
            "num_labels": 3,
        },
        "vision",
        "vit.embeddings.patch_embeddings",
        "vit.layers.0.layernorm_before",
        "classifier",
        skip_first=1,
    ),
    "resnet": Family(
        "ResNetForImageClassification",
        "ResNetConfig",
        {
            "num_channels": 3,
            "embedding_size": 8,
            "hidden_sizes": [8, 16],
            "depths": [1, 1],
            "num_labels": 3,
        },
        "vision",
        "resnet.embedder",
        "resnet.encoder",
        "classifier.1",
    ),
}


def make_model(name: str, seed: int = 0, **overrides: Any) -> nn.Module:
    """A tiny ``name`` model, seeded, in training mode, with every dropout probability 0."""
    family = FAMILIES[name]
    config = getattr(transformers, family.config_class)(**{**family.config, **overrides})
    for key, value in config.to_dict().items():
        if ("drop" in key) and isinstance(value, float):
            setattr(config, key, 0.0)
    torch.manual_seed(seed)
    model = getattr(transformers, family.model_class)(config)
    return model.train()


def make_batch(
    name: str, batch: int = 3, length: int = 7, target: int = 5, regression: bool = False
) -> dict[str, torch.Tensor]:
    """A padded batch for ``name``: row 1 has two padding positions; seq2seq labels and LM
    labels carry -100 where they must not count."""
    family = FAMILIES[name]
    g = torch.Generator().manual_seed(1)
    if family.kind == "vision":
        return {
            "pixel_values": torch.randn(batch, 3, 16, 16, generator=g),
            "labels": torch.randint(0, 3, (batch,), generator=g),
        }
    input_ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1, -2:] = 0
    input_ids[attention_mask == 0] = 0 if name in ("t5", "gpt2-classifier") else 1
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if family.kind == "classifier":
        out["labels"] = (
            torch.randn(batch, generator=g)
            if regression
            else torch.randint(0, 2, (batch,), generator=g)
        )
    elif family.kind == "seq2seq":
        labels = torch.randint(3, VOCAB, (batch, target), generator=g)
        labels[0, -2:] = -100
        labels[2, -1:] = -100
        out["labels"] = labels
    else:
        labels = input_ids.clone()
        labels[attention_mask == 0] = -100
        labels[:, :2] = -100  # the prompt
        out["labels"] = labels
    return out


class NoiseRecorder:
    """An ad-hoc plugin: noise types that draw like the built-ins and keep every sample."""

    def __init__(self) -> None:
        self.samples: list[torch.Tensor] = []

    def _recording(self, sampler: Any) -> Any:
        def draw(embeddings: torch.Tensor, eps: float) -> torch.Tensor:
            noise = sampler(embeddings, eps)
            self.samples.append(noise.detach().clone())
            return noise

        return draw

    @rxf.hookimpl
    def rxf_register_noise_types(self) -> dict[str, Any]:
        return {
            "recorded_uniform": self._recording(uniform_noise),
            "recorded_normal": self._recording(normal_noise),
        }


@pytest.fixture
def noise_recorder() -> Any:
    recorder = NoiseRecorder()
    manager = rxf.plugin_manager()
    manager.register(recorder, name="noise-recorder")
    yield recorder
    manager.unregister(recorder)


class InputCapture:
    """Forward pre-hooks that keep the first positional input of modules, call by call."""

    def __init__(self, model: nn.Module, *paths: str) -> None:
        self.inputs: dict[str, list[torch.Tensor]] = {path: [] for path in paths}
        self.handles = [
            model.get_submodule(path).register_forward_pre_hook(self._keeper(path))
            for path in paths
        ]

    def _keeper(self, path: str) -> Any:
        def keep(module: nn.Module, args: tuple[Any, ...]) -> None:
            self.inputs[path].append(args[0].detach().clone())

        return keep

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
