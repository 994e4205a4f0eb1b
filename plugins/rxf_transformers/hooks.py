"""The rxf hook implementations for Hugging Face transformers models.

Each hook answers only for models that look like a ``PreTrainedModel`` and returns ``None``
for anything else, so other plugins and the built-in defaults are asked next.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from rxf import ForwardInputs, hookimpl
from rxf_transformers import families, masks, saving


@hookimpl
def rxf_find_embedding(model: nn.Module) -> nn.Module | None:
    """The token-embedding lookup (the encoder's, for seq2seq) or a vision model's stem."""
    if not families.is_transformers_model(model):
        return None
    return families.token_embedding(model)


@hookimpl
def rxf_find_head(model: nn.Module) -> nn.Module | None:
    """``classifier`` / ``classification_head`` / ``score``; refuses generation heads."""
    if not families.is_transformers_model(model):
        return None
    return families.classification_head(model)


@hookimpl
def rxf_embedding_calls(model: nn.Module) -> str | None:
    """``"first"`` for an encoder-decoder whose encoder and decoder call one embedding
    module (``set_input_embeddings`` on BART/T5 ties them): only the source is perturbed."""
    if not families.is_transformers_model(model) or not families.is_encoder_decoder(model):
        return None
    return "first" if families.shares_embedding_module(model) else None


@hookimpl
def rxf_sequence_starts(model: nn.Module, inputs: ForwardInputs) -> Tensor | None:
    """Packed rows from ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)``:
    ``cu_seq_lens_q`` holds the cumulative sequence lengths of the one flattened row."""
    if not families.is_transformers_model(model):
        return None
    return masks.sequence_starts(inputs)


@hookimpl
def rxf_prepare_concat_inputs(model: nn.Module, inputs: ForwardInputs) -> ForwardInputs | None:
    """Seq2seq models in concat mode: decoder inputs built from the real labels
    (``prepare_decoder_input_ids_from_labels``) before rxf masks the noisy half's labels.
    Also answers for any model following the convention ``config.is_encoder_decoder``."""
    if not (families.is_transformers_model(model) or families.is_encoder_decoder(model)):
        return None
    return masks.concat_inputs(model, inputs)


@hookimpl
def rxf_token_mask(model: nn.Module, inputs: ForwardInputs, logits: Tensor) -> Tensor | None:
    """Labels-aware position mask: seq2seq, shifted for causal LMs, plain otherwise."""
    if not families.is_transformers_model(model) or logits.dim() != 3:
        return None
    return masks.token_mask(model, inputs, logits)


@hookimpl
def rxf_register_wrapper_methods() -> dict[str, Callable[..., Any]]:
    """``save_pretrained`` on the wrapper: the inner model's, with R4F baked in."""
    return {"save_pretrained": saving.save_pretrained}
