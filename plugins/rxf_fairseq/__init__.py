"""rxf adapter for fairseq-style models (duck-typed: fairseq itself is not needed).

Registered through the ``rxf`` entry-point group. It recognises models whose class comes
from fairseq or whose ``forward`` takes ``src_tokens``, and tells rxf:

* the embedding: ``encoder.sentence_encoder.embed_tokens`` (RoBERTa),
  ``encoder.embed_tokens`` (transformer, BART), ``decoder.embed_tokens`` (language models);
* the embedding calls: only the first (the encoder's) when the encoder and the decoder share
  one embedding module, so the decoder's input stays clean;
* the head for R4F: the one ``classification_heads[name]`` (its final Linear, ``out_proj``);
* the token mask: non-padding ``prev_output_tokens`` (seq2seq) or ``src_tokens``.

Logits come from ``(logits, extra)`` tuples through rxf's defaults. The reference
criteria live in :mod:`rxf_fairseq.criteria`; :func:`config_from_args` reads the reference's
flags (``--eps``, ``--r3f-lambda``, ...) into an :class:`rxf.RXFConfig`.

Example:
    >>> import rxf_fairseq
    >>> rxf_fairseq.reference_config("sentence_prediction_r3f", r3f_lambda=0.7).noise_type
    'uniform'
"""

from rxf_fairseq.criteria import (
    LabelSmoothedCrossEntropyR3F,
    SentencePredictionR3F,
    label_smoothed_nll_loss,
    reference_config,
)
from rxf_fairseq.flags import config_from_args
from rxf_fairseq.hooks import (
    is_fairseq_style,
    rxf_embedding_calls,
    rxf_find_embedding,
    rxf_find_head,
    rxf_input_mask,
    rxf_token_mask,
    token_embedding,
)

__all__ = [
    "LabelSmoothedCrossEntropyR3F",
    "SentencePredictionR3F",
    "config_from_args",
    "is_fairseq_style",
    "label_smoothed_nll_loss",
    "reference_config",
    "rxf_embedding_calls",
    "rxf_find_embedding",
    "rxf_find_head",
    "rxf_input_mask",
    "rxf_token_mask",
    "token_embedding",
]
