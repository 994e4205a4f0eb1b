"""rxf adapter for Hugging Face transformers: ``rxf.wrap(model)`` with no paths given.

Registered through the ``rxf`` entry-point group (name ``transformers``); rxf loads it on
first use. It recognises ``PreTrainedModel``-like models by duck typing and answers:

* the embedding: the token-embedding lookup (``get_input_embeddings()``; for seq2seq the
  *encoder's* lookup, so a shared table never carries noise into the decoder), or the patch
  embedding / stem of a vision model;
* the head for R4F: ``classifier``, ``classification_head`` or ``score`` (R4F is refused
  with :class:`rxf.RXFError` for generation heads such as ``lm_head``);
* the logits come from rxf's defaults (``output.logits``; with ``return_dict=False`` the
  first non-scalar floating tensor of the tuple);
* the token mask: positions whose label is not -100, shifted by one for causal LMs;
* the embedding calls: only the first (the encoder's) when an encoder-decoder's encoder and
  decoder call one embedding module;
* the sequence starts of packed rows (``cu_seq_lens_q``), for length-aware noise.

Importing this package does not import ``transformers``; :class:`RXFCallback`,
:class:`RXFTrainer` and :class:`RXFSFTTrainer` (TRL's ``SFTTrainer`` through the wrapper,
see :mod:`rxf_transformers.sft`), which need its types, are built on first access.

Example:
    >>> import rxf
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> model = rxf.wrap(BertForSequenceClassification(BertConfig(
    ...     vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
    ...     intermediate_size=8)))
    >>> rxf.explain(model).embedding
    'bert.embeddings.word_embeddings'
"""

from __future__ import annotations

from typing import Any

from rxf_transformers.hooks import (
    rxf_embedding_calls,
    rxf_find_embedding,
    rxf_find_head,
    rxf_prepare_concat_inputs,
    rxf_register_wrapper_methods,
    rxf_sequence_starts,
    rxf_token_mask,
)

__all__ = [
    "RXFCallback",
    "RXFSFTTrainer",
    "RXFTrainer",
    "rxf_embedding_calls",
    "rxf_find_embedding",
    "rxf_find_head",
    "rxf_prepare_concat_inputs",
    "rxf_register_wrapper_methods",
    "rxf_sequence_starts",
    "rxf_token_mask",
]


def __getattr__(name: str) -> Any:
    if name == "RXFCallback":
        from rxf_transformers.callback import callback_class

        return callback_class()
    if name == "RXFTrainer":
        from rxf_transformers.trainer import trainer_class

        return trainer_class()
    if name == "RXFSFTTrainer":  # needs trl
        from rxf_transformers.sft import sft_trainer_class

        return sft_trainer_class()
    raise AttributeError(f"module 'rxf_transformers' has no attribute {name!r}")
