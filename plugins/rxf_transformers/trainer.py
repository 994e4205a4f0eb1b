"""RXFTrainer: ``transformers.Trainer`` for a wrapped model, with label smoothing that keeps R3F.

The plain ``Trainer`` already trains a wrapped model (the term is inside ``output.loss``).
Three things need a subclass:

* ``label_smoothing_factor``: the plain Trainer pops ``labels`` before the forward, so the
  model computes no loss, the term is never added, and the token mask cannot see the labels.
  RXFTrainer keeps the labels in the forward and returns the smoothed loss + the term.
* ``label_names``: the Trainer reads them from the model's *class* signature, which for the
  wrapper is ``(*args, **kwargs)``; RXFTrainer reads them from the inner model's class, so
  evaluation reports ``eval_loss``.
* RXFCallback runs first among the callbacks, so loggers (TensorBoard, ...) see its numbers.
"""

from __future__ import annotations

from typing import Any

from rxf.errors import RXFError
from rxf_transformers.callback import callback_class, find_rxf_model
from rxf_transformers.families import shifts_labels

IGNORE_INDEX = -100
_cache: dict[str, type] = {}


def trainer_class() -> type:
    """The ``RXFTrainer`` class (a ``transformers.Trainer``), built once."""
    if "trainer" not in _cache:
        _cache["trainer"] = _build()
    return _cache["trainer"]


def _build() -> type:
    from transformers import Trainer
    from transformers.utils import can_return_loss, find_labels

    callback_type = callback_class()

    class RXFTrainer(Trainer):
        """``transformers.Trainer`` for a model wrapped by :func:`rxf.wrap`; same arguments.

        Example:
            >>> trainer = RXFTrainer(model=rxf.wrap(model), args=args,  # doctest: +SKIP
            ...                      train_dataset=data)
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            wrapped = find_rxf_model(self.model)
            if wrapped is None:
                raise RXFError(
                    f"RXFTrainer expects a model wrapped by rxf.wrap, got "
                    f"{type(self.model).__name__}; pass model=rxf.wrap(model)."
                )
            self.rxf_model = wrapped
            handler = self.callback_handler
            ours = [cb for cb in handler.callbacks if isinstance(cb, callback_type)]
            for cb in ours:
                handler.callbacks.remove(cb)
            callback: Any = ours[0] if ours else callback_type()
            callback.keeps_labels = True
            handler.callbacks.insert(0, callback)
            inner_class = type(wrapped.module)
            if self.args.label_names is None:
                self.label_names = find_labels(inner_class)
            self.can_return_loss = can_return_loss(inner_class)

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            if self.label_smoother is None or "labels" not in inputs:
                return super().compute_loss(
                    model,
                    inputs,
                    return_outputs=return_outputs,
                    num_items_in_batch=num_items_in_batch,
                )
            labels = inputs["labels"]
            if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
                inputs = {**inputs, "num_items_in_batch": num_items_in_batch}
            outputs = model(**inputs)
            shift = shifts_labels(self.rxf_model.module)
            loss = self.label_smoother(
                outputs, labels, shift_labels=shift, num_items_in_batch=num_items_in_batch
            )
            term = self.rxf_model.consistency_loss
            if num_items_in_batch is not None:
                counted = labels[..., 1:] if shift else labels
                term = term * counted.ne(IGNORE_INDEX).sum() / num_items_in_batch
            loss = loss + term.to(loss.device)
            if num_items_in_batch is not None and getattr(
                self.args, "average_tokens_across_devices", False
            ):
                tp_size = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
                scale = self.accelerator.num_processes // tp_size
                loss = loss * (scale if self.args.n_gpu <= 1 else self.args.n_gpu)
            return (loss, outputs) if return_outputs else loss

    RXFTrainer.__module__ = "rxf_transformers"
    return RXFTrainer
