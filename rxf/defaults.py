"""Built-in plugin: generic fallbacks, the built-in noise types and divergences.

Registered ``trylast``, so every other plugin is asked first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from rxf.divergence import BUILTIN_DIVERGENCES, Divergence
from rxf.hookspecs import hookimpl
from rxf.inputs import IGNORE_INDEX, ForwardInputs
from rxf.noise import BUILTIN_NOISE_TYPES, NoiseSampler

EMBEDDING_NAMES = ("word_embeddings", "embed_tokens", "wte", "tok_embeddings", "token_embedding")
HEAD_NAMES = ("classifier", "classification_head", "score", "head", "fc")


@hookimpl(trylast=True)
def rxf_find_embedding(model: nn.Module) -> nn.Module | None:
    """``get_input_embeddings()``, else the one module under a usual embedding name, else
    the model's only ``nn.Embedding``."""
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        try:
            found = getter()
        except (NotImplementedError, AttributeError):
            found = None
        if isinstance(found, nn.Module):
            return found
    named = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in EMBEDDING_NAMES]
    if len(named) == 1:
        return named[0]
    embeddings = [m for m in model.modules() if type(m) is nn.Embedding]
    return embeddings[0] if len(embeddings) == 1 else None


@hookimpl(trylast=True)
def rxf_find_head(model: nn.Module) -> nn.Module | None:
    """``get_classifier()``, else a child module named like a classification head."""
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        found = getter()
        if isinstance(found, nn.Module):
            return found
    for name in HEAD_NAMES:
        found = getattr(model, name, None)
        if isinstance(found, nn.Module):
            return found
    return None


@hookimpl(trylast=True)
def rxf_extract_logits(model: nn.Module, output: Any) -> Tensor | None:
    """A tensor; ``.logits`` / ``["logits"]``; or the first non-scalar tensor of a tuple."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, Tensor) and item.dim() > 0 and item.is_floating_point():
                return item
    return None


@hookimpl(trylast=True)
def rxf_token_mask(inputs: ForwardInputs, logits: Tensor) -> Tensor | None:
    """Positions whose ``labels`` are not -100, else the ``attention_mask`` when it fits."""
    if logits.dim() != 3:
        return None
    positions = tuple(logits.shape[:2])
    labels = inputs.get("labels")
    if isinstance(labels, Tensor) and tuple(labels.shape) == positions:
        return labels != IGNORE_INDEX
    attention = inputs.get("attention_mask")
    if isinstance(attention, Tensor) and tuple(attention.shape) == positions:
        return attention.bool()
    return None


@hookimpl(trylast=True)
def rxf_input_mask(model: nn.Module, inputs: ForwardInputs) -> Tensor | None:
    """The ``attention_mask`` keyword, when the forward got a 2-D one."""
    attention = inputs.get("attention_mask")
    if isinstance(attention, Tensor) and attention.dim() == 2:
        return attention.bool()
    return None


@hookimpl(trylast=True)
def rxf_sequence_starts(model: nn.Module, inputs: ForwardInputs) -> Tensor | None:
    """Where ``position_ids`` restart at 0 inside a row (packed examples), when given."""
    positions = inputs.get("position_ids")
    if not isinstance(positions, Tensor) or positions.dim() != 2:
        return None
    return positions == 0


@hookimpl(trylast=True)
def rxf_embedding_calls(model: nn.Module) -> str:
    """Every call of the embedding module in the noisy pass gets noise."""
    return "all"


@hookimpl(trylast=True)
def rxf_prepare_concat_inputs(model: nn.Module, inputs: ForwardInputs) -> ForwardInputs:
    """The inputs as they are."""
    return inputs


@hookimpl
def rxf_register_noise_types() -> dict[str, NoiseSampler]:
    """The built-in noise types: uniform, normal (NEFTune's comes from its plugin)."""
    return dict(BUILTIN_NOISE_TYPES)


@hookimpl
def rxf_register_divergences() -> dict[str, Divergence]:
    """The built-in divergences: symmetric_kl, kl, js, mse."""
    return dict(BUILTIN_DIVERGENCES)
