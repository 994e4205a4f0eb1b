"""rxf hooks for ``SentenceTransformer`` models (recognised by duck typing)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rxf import RXFError, hookimpl


def is_sentence_transformer(model: Any) -> bool:
    """A sentence-transformers model: an ``nn.Module`` from that library with ``encode``."""
    return isinstance(model, nn.Module) and type(model).__module__.startswith(
        "sentence_transformers"
    )


@hookimpl
def rxf_find_embedding(model: nn.Module) -> nn.Module | None:
    """The token-embedding lookup of the first Hugging Face model inside."""
    if not is_sentence_transformer(model):
        return None
    for module in model.modules():
        get = getattr(module, "get_input_embeddings", None)
        if module is not model and callable(get):
            embedding = get()
            if isinstance(embedding, nn.Module):
                return embedding
    return None


@hookimpl
def rxf_extract_logits(model: nn.Module, output: Any) -> Tensor | None:
    """Refuses: a SentenceTransformer has no logits, and its losses call it themselves."""
    if not is_sentence_transformer(model):
        return None
    raise RXFError(
        "R3F on a SentenceTransformer goes through its loss, not the model: the model "
        "returns sentence embeddings and the loss calls it itself, so a term computed here "
        "would never reach training. Keep the model unwrapped and wrap the loss: "
        "rxf_sentence_transformers.RXFLoss(MultipleNegativesRankingLoss(model), eps=...)."
    )
