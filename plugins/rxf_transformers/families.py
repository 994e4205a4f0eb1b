"""What kind of Hugging Face model this is, and where its embedding and head live.

Everything here duck-types the model (``config.model_type``, ``base_model_prefix``,
``get_input_embeddings()``, ...), so nothing imports ``transformers``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rxf import RXFError, first_submodule

HEAD_NAMES = ("classifier", "classification_head", "score")
VISION_STEMS = ("embeddings.patch_embeddings", "embedder")
_GENERATION_LOSS = ("ForCausalLM", "ForConditionalGeneration")


def is_transformers_model(model: Any) -> bool:
    """Whether ``model`` looks like a ``transformers.PreTrainedModel``.

    Example:
        >>> is_transformers_model(nn.Linear(2, 2))
        False
    """
    config = getattr(model, "config", None)
    return (
        isinstance(model, nn.Module)
        and isinstance(getattr(config, "model_type", None), str)
        and isinstance(getattr(model, "base_model_prefix", None), str)
        and callable(getattr(model, "get_input_embeddings", None))
    )


def is_encoder_decoder(model: nn.Module) -> bool:
    """Seq2seq models (BART, mBART, T5, ...): ``config.is_encoder_decoder``."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def shifts_labels(model: nn.Module) -> bool:
    """Whether the model's own loss pairs logits position ``t`` with ``labels[:, t + 1]``.

    True for decoder-only language models (GPT-2, Llama, ...): their ``loss_type`` is
    ``"ForCausalLM"``, or unset on a model that can generate. Seq2seq models align their
    labels with the decoder's positions, so they never shift.
    """
    if is_encoder_decoder(model):
        return False
    loss_type = getattr(model, "loss_type", None)
    if loss_type == "ForCausalLM":
        return True
    if loss_type is not None and loss_type not in _GENERATION_LOSS:
        return False
    can_generate = getattr(model, "can_generate", None)
    return bool(callable(can_generate) and can_generate())


def _input_embeddings(module: nn.Module) -> nn.Module | None:
    getter = getattr(module, "get_input_embeddings", None)
    if not callable(getter):
        return None
    try:
        found = getter()
    except (NotImplementedError, AttributeError):
        return None
    return found if isinstance(found, nn.Module) else None


def token_embedding(model: nn.Module) -> nn.Module | None:
    """The module whose output is the token-embedding lookup (or a vision model's stem).

    Seq2seq: the **encoder's** lookup (``get_encoder().get_input_embeddings()``), never the
    model-level ``shared`` table, which the forward does not call in transformers 5. Text
    models: ``get_input_embeddings()``. Vision models without one: the patch embedding or
    the stem (``embeddings.patch_embeddings``, ``embedder``). ``None`` when nothing fits.
    """
    if is_encoder_decoder(model):
        get_encoder = getattr(model, "get_encoder", None)
        encoder = get_encoder() if callable(get_encoder) else None
        if not isinstance(encoder, nn.Module) or encoder is model:
            return None
        found = _input_embeddings(encoder)
        return found if found is not None else first_submodule(encoder, ["embed_tokens"])
    found = _input_embeddings(model)
    if found is not None:
        return found
    base = getattr(model, "base_model", model)
    return first_submodule(base, VISION_STEMS)


def shares_embedding_module(model: nn.Module) -> bool:
    """Whether an encoder-decoder's encoder and decoder call one embedding module object."""
    getters = [getattr(model, name, None) for name in ("get_encoder", "get_decoder")]
    if not all(callable(g) for g in getters):
        return False
    sides = [g() for g in getters]  # type: ignore[misc]
    tables = [_input_embeddings(side) if isinstance(side, nn.Module) else None for side in sides]
    return tables[0] is not None and tables[0] is tables[1]


def generation_head(model: nn.Module) -> nn.Module | None:
    """The vocabulary projection (``lm_head``, ``cls.predictions.decoder``), if any."""
    getter = getattr(model, "get_output_embeddings", None)
    try:
        found = getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        found = None
    if isinstance(found, nn.Module):
        return found
    return first_submodule(model, ["lm_head"])


def classification_head(model: nn.Module) -> nn.Module | None:
    """The classification head (``classifier``, ``classification_head``, ``score``).

    Raises:
        RXFError: the model ends in a generation head instead, where R4F does not apply.
    """
    for name in HEAD_NAMES:
        found = getattr(model, name, None)
        if isinstance(found, nn.Module):
            return found
    head = generation_head(model)
    if head is not None:
        path = next((n for n, m in model.named_modules() if m is head), "lm_head")
        size = getattr(head, "out_features", None) or getattr(head, "num_embeddings", "?")
        raise RXFError(
            f"R4F (spectral_norm_head=True) does not apply to {type(model).__name__}: its output "
            f"layer {path!r} is a generation head over the vocabulary ({size} outputs), and "
            f"the paper defines R4F for classification heads only. Use R3F "
            f"(spectral_norm_head=False), or name a layer explicitly with RXFConfig(head=...)."
        )
    return None
