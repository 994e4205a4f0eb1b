"""Which logits positions count for a token-level divergence, for each model kind.

* seq2seq (BART, T5): decoder position ``t`` counts iff ``labels[:, t] != -100``; without
  labels the ``decoder_attention_mask``; without that every position (never the encoder's
  ``attention_mask``, which has the source's length).
* causal LMs (GPT-2, Llama): the model shifts its labels, so position ``t`` counts iff
  ``labels[:, t + 1] != -100`` (the last position never does), or ``shift_labels != -100``
  when the forward got ``shift_labels``; without labels the ``attention_mask``.
* everything else (token classification, masked LM): ``labels != -100``, else the
  ``attention_mask``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rxf import IGNORE_INDEX, ForwardInputs, RXFError
from rxf_transformers.families import is_encoder_decoder, shifts_labels


def _tensor(value: object) -> Tensor | None:
    return value if isinstance(value, Tensor) and value.dim() == 2 else None


def shifted_label_mask(labels: Tensor) -> Tensor:
    """``mask[:, t] = labels[:, t + 1] != -100``; the last position is always False.

    Example:
        >>> shifted_label_mask(torch.tensor([[5, 6, -100, 7]])).tolist()
        [[True, False, True, False]]
    """
    mask = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def token_mask(model: nn.Module, inputs: ForwardInputs, logits: Tensor) -> Tensor | None:
    """The boolean ``(batch, positions)`` mask for ``logits`` of shape ``(batch, positions, V)``.

    Returns ``None`` when no input says which positions are real (encoder-only and causal
    models), so later plugins are asked.

    Example:
        >>> gpt = type("GPT", (nn.Module,), {"can_generate": lambda self: True})()
        >>> labels = torch.tensor([[-100, 4, 5]])
        >>> token_mask(gpt, ForwardInputs((), {"labels": labels}), torch.zeros(1, 3, 9)).tolist()
        [[True, True, False]]
    """
    labels = _tensor(inputs.get("labels"))
    mask: Tensor | None
    if is_encoder_decoder(model):
        if labels is not None:
            mask = labels != IGNORE_INDEX
        else:
            decoder_mask = _tensor(inputs.get("decoder_attention_mask"))
            mask = (
                decoder_mask.bool()
                if decoder_mask is not None
                else torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
            )
    elif shifts_labels(model):
        shifted = _tensor(inputs.get("shift_labels"))
        if shifted is not None:
            mask = shifted != IGNORE_INDEX
        elif labels is not None:
            mask = shifted_label_mask(labels)
        else:
            attention = _tensor(inputs.get("attention_mask"))
            mask = attention.bool() if attention is not None else None
    else:
        attention = _tensor(inputs.get("attention_mask"))
        mask = (
            labels != IGNORE_INDEX
            if labels is not None
            else (attention.bool() if attention is not None else None)
        )
    return None if mask is None else _fit(mask, logits)


def _fit(mask: Tensor, logits: Tensor) -> Tensor:
    """Align ``mask`` with the logits' positions: a model asked for the last ``k`` positions
    only (``logits_to_keep=k``) returns logits for the mask's last ``k`` columns."""
    positions = logits.shape[1]
    if mask.shape[0] == logits.shape[0] and mask.shape[1] >= positions:
        return mask[:, mask.shape[1] - positions :]
    raise RXFError(
        f"the token mask of shape {tuple(mask.shape)} (from labels / attention masks) does not "
        f"fit logits of shape {tuple(logits.shape)}; pass labels shaped like the logits' "
        f"(batch, positions), or set RXFConfig(token_reduction='reference')."
    )


def sequence_starts(inputs: ForwardInputs) -> Tensor | None:
    """Where the packed sequences of a flattened row begin, from ``cu_seq_lens_q`` (the
    cumulative lengths ``[0, L_1, L_1 + L_2, ...]`` that ``DataCollatorWithFlattening``
    returns with ``return_flash_attn_kwargs=True``); ``None`` without it.

    Example:
        >>> inputs = ForwardInputs((), {"input_ids": torch.zeros(1, 5, dtype=torch.long),
        ...     "cu_seq_lens_q": torch.tensor([0, 2, 5])})
        >>> sequence_starts(inputs).int().tolist()
        [[1, 0, 1, 0, 0]]
    """
    cumulative = inputs.get("cu_seq_lens_q")
    ids = inputs.get("input_ids", 0)
    if not isinstance(cumulative, Tensor) or cumulative.dim() != 1:
        return None
    tokens = int(cumulative[-1]) if ids is None else int(ids.shape[-1])
    starts = torch.zeros(1, tokens, dtype=torch.bool, device=cumulative.device)
    firsts = cumulative[:-1].long()
    starts[0, firsts[firsts < tokens]] = True
    return starts


def concat_inputs(model: nn.Module, inputs: ForwardInputs) -> ForwardInputs:
    """``inputs`` with ``decoder_input_ids`` built from the real ``labels`` (teacher forcing)
    for seq2seq models that would derive them from the labels, so concat mode's masking of the
    noisy half's labels cannot change what its decoder reads.

    Raises:
        RXFError: an encoder-decoder model without ``prepare_decoder_input_ids_from_labels``
            and without explicit decoder inputs.
    """
    labels = inputs.kwargs.get("labels")
    given = any(
        inputs.kwargs.get(k) is not None for k in ("decoder_input_ids", "decoder_inputs_embeds")
    )
    if not isinstance(labels, Tensor) or labels.dim() < 2 or given:
        return inputs
    prepare = getattr(model, "prepare_decoder_input_ids_from_labels", None)
    if callable(prepare):
        return ForwardInputs(
            inputs.args, {**inputs.kwargs, "decoder_input_ids": prepare(labels=labels)}
        )
    if is_encoder_decoder(model):
        raise RXFError(
            f"concat mode: {type(model).__name__} is an encoder-decoder model and may build its "
            f"decoder inputs from labels, which rxf masks on the noisy half. Pass "
            f"decoder_input_ids=... explicitly, or use RXFConfig(mode='two_pass')."
        )
    return inputs
