"""rxf adapter for sentence-transformers: R3F in ``SentenceTransformerTrainer`` and ``fit``.

A ``SentenceTransformer`` returns sentence embeddings, not logits, and its training losses
call the model themselves, so wrapping the model cannot reach the loss. Wrap the *loss*
instead, as sentence-transformers' own loss modifiers (``MatryoshkaLoss``) do::

    loss = RXFLoss(MultipleNegativesRankingLoss(model), eps=1e-5, r3f_lambda=1.0)
    SentenceTransformerTrainer(model=model, train_dataset=data, loss=loss).train()

:class:`RXFLoss` adds ``r3f_lambda · divergence`` between the clean and the noisy batch to
the wrapped loss; see its docstring for the two definitions of the term. Registered through
the ``rxf`` entry-point group (name ``sentence_transformers``): it finds the token embedding
of a ``SentenceTransformer`` (for ``rxf.explain`` and noise-only use) and refuses R3F on a
bare wrapped ``SentenceTransformer`` with the fix. Importing it does not import
``sentence_transformers``.
"""

from __future__ import annotations

from rxf_sentence_transformers.hooks import rxf_extract_logits, rxf_find_embedding
from rxf_sentence_transformers.loss import RXFLoss

__all__ = ["RXFLoss", "rxf_extract_logits", "rxf_find_embedding"]
