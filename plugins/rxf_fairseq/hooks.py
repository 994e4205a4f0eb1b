"""Hook implementations for fairseq-style models, found by their conventions (duck-typed).

A model is fairseq-style when its class lives in ``fairseq`` or its ``forward`` takes
``src_tokens`` (RoBERTa, BART, transformer and language models all do).
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

from torch import Tensor, nn

from rxf import ForwardInputs, RXFError, first_submodule, hookimpl

# Where fairseq keeps the token lookup, in the order rxf looks: RoBERTa, encoder-decoder
# (transformer, BART), decoder-only language model.
EMBEDDING_PATHS = (
    "encoder.sentence_encoder.embed_tokens",
    "encoder.embed_tokens",
    "decoder.embed_tokens",
)


@lru_cache(maxsize=256)
def _is_fairseq_class(cls: Any) -> bool:
    if cls.__module__.split(".")[0] == "fairseq":
        return True
    try:
        return "src_tokens" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False


def is_fairseq_style(model: nn.Module) -> bool:
    """Whether ``model`` follows fairseq's conventions (class from fairseq, or ``src_tokens``).

    Example:
        >>> class LM(nn.Module):
        ...     def forward(self, src_tokens): ...
        >>> is_fairseq_style(LM()), is_fairseq_style(nn.Linear(2, 2))
        (True, False)
    """
    cls: Any = type(model)
    return _is_fairseq_class(cls)


def token_embedding(model: nn.Module) -> nn.Module | None:
    """The source-side token lookup of a fairseq-style model, or ``None``.

    The encoder's lookup when there is an encoder (the decoder's, shared or not, stays
    clean), else the decoder's (language models). The lookup runs before fairseq multiplies
    by ``embed_scale`` and adds positions, so noise on its output is scaled like the
    embedding, as in the reference criteria.
    """
    return first_submodule(model, EMBEDDING_PATHS)


def _padding_idx(embedding: nn.Module | None) -> int | None:
    pad = getattr(embedding, "padding_idx", None)
    return pad if isinstance(pad, int) else None


@hookimpl
def rxf_find_embedding(model: nn.Module) -> nn.Module | None:
    """``encoder.sentence_encoder.embed_tokens``, ``encoder.embed_tokens`` or
    ``decoder.embed_tokens`` of a fairseq-style model."""
    return token_embedding(model) if is_fairseq_style(model) else None


@hookimpl
def rxf_embedding_calls(model: nn.Module) -> str | None:
    """``"first"`` when the encoder and the decoder call one embedding module
    (``--share-all-embeddings``): the encoder's lookup comes first, and only the source is
    perturbed, as in ``label_smoothed_cross_entropy_r3f``."""
    if not is_fairseq_style(model):
        return None
    encoder = first_submodule(model, ["encoder.embed_tokens"])
    decoder = first_submodule(model, ["decoder.embed_tokens"])
    return "first" if encoder is not None and encoder is decoder else None


@hookimpl
def rxf_find_head(model: nn.Module) -> nn.Module | None:
    """The one registered ``classification_heads[name]``; an error when there are several
    or none (R4F does not apply to a generation output projection)."""
    if not is_fairseq_style(model):
        return None
    heads = getattr(model, "classification_heads", None)
    names = list(heads.keys()) if isinstance(heads, nn.ModuleDict) else []
    if len(names) == 1:
        return heads[names[0]]  # type: ignore[index]
    if names:
        options = ", ".join(f"RXFConfig(head='classification_heads.{n}')" for n in names)
        raise RXFError(
            f"{type(model).__name__} has {len(names)} classification heads ({', '.join(names)}); "
            f"say which one R4F normalizes: {options}."
        )
    raise RXFError(
        f"R4F normalizes a classification head, but {type(model).__name__} has no "
        f"classification_heads registered (its output projection is a generation head). "
        f"Register one with model.register_classification_head(name, num_classes=...), or "
        f"name a head with RXFConfig(head=...)."
    )


def _tokens_mask(tokens: Any, embedding: nn.Module | None, shape: tuple[int, ...]) -> Tensor | None:
    pad = _padding_idx(embedding)
    if isinstance(tokens, Tensor) and tuple(tokens.shape) == shape and pad is not None:
        return tokens.ne(pad)
    return None


@hookimpl
def rxf_token_mask(model: nn.Module, inputs: ForwardInputs, logits: Tensor) -> Tensor | None:
    """Real target positions from the padding of ``prev_output_tokens`` (seq2seq), or of
    ``src_tokens`` (language models, masked LM over all positions).

    ``prev_output_tokens`` is the target shifted right with the same padding, so its
    non-pad positions are exactly those where ``sample["target"]`` is not padding
    (fairseq's default right-padded targets).
    """
    if not is_fairseq_style(model) or logits.dim() != 3:
        return None
    shape = tuple(logits.shape[:2])
    decoder_mask = _tokens_mask(
        inputs.get("prev_output_tokens", 2), first_submodule(model, ["decoder.embed_tokens"]), shape
    )
    if decoder_mask is not None:
        return decoder_mask
    return _tokens_mask(inputs.get("src_tokens", 0), token_embedding(model), shape)


@hookimpl
def rxf_input_mask(model: nn.Module, inputs: ForwardInputs) -> Tensor | None:
    """Non-padding ``src_tokens`` (for length-aware noise such as NEFTune)."""
    if not is_fairseq_style(model):
        return None
    tokens = inputs.get("src_tokens", 0)
    pad = _padding_idx(token_embedding(model))
    if isinstance(tokens, Tensor) and tokens.dim() == 2 and pad is not None:
        return tokens.ne(pad)
    return None
