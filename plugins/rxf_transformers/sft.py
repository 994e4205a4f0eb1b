"""RXFSFTTrainer: TRL's ``SFTTrainer`` whose training forwards go through rxf.

``trl.SFTTrainer`` replaces the model's ``forward`` on the instance with a fused LM-head
forward (``trl.trainer.utils.add_fused_lm_head``) and calls it with ``fused_lm_head=True``.
For a wrapped model that forward runs the inner model's backbone directly and computes only
the log-probability of each label token, never the full logits: rxf is bypassed (no noise,
no term), and R3F's divergence, defined over the whole output distribution, could not be
computed from it anyway. :class:`rxf_transformers.RXFCallback` therefore refuses the plain
``SFTTrainer`` with a wrapped model.

``RXFSFTTrainer`` takes the same arguments. Its training and evaluation losses come from the
model's own forward through the wrapper (the full logits, ``labels`` with TRL's prompt
masking, so R3F's token-level term covers the completion tokens), with everything
:class:`rxf_transformers.RXFTrainer` adds (the term weighed like the loss under gradient
accumulation, label smoothing, ``save_pretrained``, :class:`~rxf_transformers.RXFCallback`
first). TRL's fused forward stays in place for generation; the token-entropy and accuracy
metrics it computes are not logged. Built on first access, so importing the plugin does not
import ``trl``.

Example:
    >>> from rxf_transformers.sft import RXFSFTTrainer  # doctest: +SKIP
    >>> trainer = RXFSFTTrainer(model=rxf.wrap(model), args=SFTConfig(...),  # doctest: +SKIP
    ...                         train_dataset=data, processing_class=tokenizer)
"""

from __future__ import annotations

import functools
from typing import Any

from rxf_transformers.trainer import trainer_class

__all__ = ["sft_trainer_class"]  # and RXFSFTTrainer, built on first access


@functools.cache
def sft_trainer_class() -> type:
    """The ``RXFSFTTrainer`` class (an ``RXFTrainer`` and a ``trl.SFTTrainer``), built once."""
    return _build()


def _build() -> type:
    from trl import SFTTrainer

    rxf_trainer: Any = trainer_class()

    class RXFSFTTrainer(rxf_trainer, SFTTrainer):
        """``trl.SFTTrainer`` for a model wrapped by :func:`rxf.wrap`; same arguments."""

        rxf_owns_forward = True  # RXFCallback: the fused forward is never used for the loss

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            # without fused_lm_head=True, TRL's patched forward calls the forward it replaced:
            # the wrapper's, so both passes and the term run
            inputs = {**inputs, "use_cache": False}
            return rxf_trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    RXFSFTTrainer.__module__ = "rxf_transformers.sft"
    return RXFSFTTrainer


def __getattr__(name: str) -> Any:
    if name == "RXFSFTTrainer":
        return sft_trainer_class()
    raise AttributeError(f"module 'rxf_transformers.sft' has no attribute {name!r}")
