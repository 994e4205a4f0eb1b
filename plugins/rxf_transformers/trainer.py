"""RXFTrainer: ``transformers.Trainer`` for a wrapped model, with label smoothing that keeps R3F.

The plain ``Trainer`` already trains a wrapped model (the term is inside ``output.loss``),
evaluates it (the wrapper's class shows the inner forward signature, so the label names and
``eval_loss`` are found) and checkpoints it (the wrapper's state dict holds the inner keys,
tied weights once). Four things need a subclass:

* ``label_smoothing_factor`` and ``compute_loss_func``: the plain Trainer pops ``labels``
  before the forward, so the model computes no loss, the term is never added, and the token
  mask cannot see the labels. RXFTrainer keeps the labels in the forward and returns the
  smoothed (or ``compute_loss_func``'s) loss + the term; with ``method="rdrop"`` that loss
  is taken on both dropout passes and averaged, as R-Drop defines it.
* gradient accumulation with causal LMs: their loss is a token sum over
  ``num_items_in_batch`` (the whole accumulated batch), which the Trainer then does not
  divide; RXFTrainer weighs the term by the micro-batch's token share the same way, so
  ``r3f_lambda`` means the same at any ``gradient_accumulation_steps``.
* saving: the Trainer writes a model that is not a ``PreTrainedModel`` as a bare
  safetensors file (no ``config.json``). RXFTrainer saves the inner model with
  ``save_pretrained``; a final ``save_model()`` bakes R4F's normalized weight in (also on
  copies of the head, e.g. PEFT's ``modules_to_save``), so ``from_pretrained`` reads it
  (checkpoints keep the parametrization, so training resumes exactly).
* RXFCallback runs first among the callbacks, so loggers (TensorBoard, ...) see its numbers.

Its ``compute_loss`` is ``Trainer``'s own, also in subclasses whose parent replaces it
(:class:`rxf_transformers.sft.RXFSFTTrainer`: TRL's fused LM head bypasses the wrapper).
"""

from __future__ import annotations

import functools
from typing import Any

from rxf import IGNORE_INDEX, RXFError
from rxf.spectral import baked_state_dict, r4f_linears
from rxf_transformers.callback import callback_class, find_rxf_model
from rxf_transformers.families import shifts_labels


@functools.cache
def trainer_class() -> type:
    """The ``RXFTrainer`` class (a ``transformers.Trainer``), built once."""
    return _build()


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
            callback.owns_forward = bool(getattr(self, "rxf_owns_forward", False))
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
            labels = inputs.get("labels")
            shift = shifts_labels(self.rxf_model.module)
            own_loss = self.label_smoother is not None or self.compute_loss_func is not None
            if not own_loss or labels is None:
                # Trainer's own loss (the model's, with the term), also under subclasses that
                # compute it another way (TRL's fused LM head bypasses the wrapper)
                loss, outputs = Trainer.compute_loss(
                    self, model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
                )
                if shift and labels is not None and self._normalized(num_items_in_batch):
                    # HF causal-LM losses are token sums / num_items_in_batch: weigh the term
                    # alike, so that lambda means the same at any gradient_accumulation_steps
                    term = self.rxf_model.consistency_loss
                    share = _token_share(inputs, labels, shift, num_items_in_batch)
                    scale = self._device_scale(num_items_in_batch)
                    loss = loss + (share - 1) * term.to(loss.device) * scale
                return (loss, outputs) if return_outputs else loss
            if self._normalized(num_items_in_batch):
                inputs = {**inputs, "num_items_in_batch": num_items_in_batch}
            outputs = model(**inputs)  # the labels stay: token mask and model loss see them
            loss = self._task_loss(outputs, labels, shift, num_items_in_batch)
            second_output = self.rxf_model.second_output
            if second_output is not None:
                # R-Drop: the task loss of both dropout passes, averaged
                second = self._task_loss(second_output, labels, shift, num_items_in_batch)
                loss = (loss + second) / 2
            term = self.rxf_model.consistency_loss
            if num_items_in_batch is not None:
                term = term * _token_share(inputs, labels, shift, num_items_in_batch)
            loss = (loss + term.to(loss.device)) * self._device_scale(num_items_in_batch)
            return (loss, outputs) if return_outputs else loss

        def _task_loss(self, outputs: Any, labels: Any, shift: bool, items: Any) -> Any:
            """The label-smoothed loss, or ``compute_loss_func``'s, of one pass's output."""
            if self.compute_loss_func is not None:
                return self.compute_loss_func(outputs, labels, num_items_in_batch=items)
            smoother: Any = self.label_smoother
            return smoother(outputs, labels, shift_labels=shift, num_items_in_batch=items)

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            self._rxf_final_save = not _internal_call
            try:
                super().save_model(output_dir, _internal_call)
            finally:
                self._rxf_final_save = False

        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            inner = self.rxf_model.module
            linears = r4f_linears(inner)  # with copies made since wrap() (PEFT)
            if getattr(self, "_rxf_final_save", False) and linears:
                state_dict = baked_state_dict(inner, state_dict)
            # the Trainer saves a PreTrainedModel with save_pretrained (config, tied weights);
            # anything else as a bare safetensors file, which fails on tied weights
            wrapper, self.model = self.model, inner
            try:
                super()._save(output_dir, state_dict)
            finally:
                self.model = wrapper

        def _normalized(self, num_items_in_batch: Any) -> bool:
            """Whether the Trainer passes ``num_items_in_batch`` to the model (and then does
            not divide the loss by the accumulation steps)."""
            return num_items_in_batch is not None and bool(self.model_accepts_loss_kwargs)

        def _device_scale(self, num_items_in_batch: Any) -> int:
            """The factor ``Trainer.compute_loss`` applies when tokens are averaged across
            devices (1 on one process)."""
            if num_items_in_batch is None or not getattr(
                self.args, "average_tokens_across_devices", False
            ):
                return 1
            if not (self.model_accepts_loss_kwargs or self.compute_loss_func):
                return 1
            tp_size = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
            scale = self.accelerator.num_processes // tp_size
            return int(scale if self.args.n_gpu <= 1 else self.args.n_gpu)

    RXFTrainer.__module__ = "rxf_transformers"
    return RXFTrainer


def _token_share(inputs: dict[str, Any], labels: Any, shift: bool, num_items_in_batch: Any) -> Any:
    """This micro-batch's share of the counted tokens, as the Trainer counts them."""
    counted = inputs.get("shift_labels")
    if counted is None:
        counted = labels[..., 1:] if shift else labels
    return counted.ne(IGNORE_INDEX).sum() / num_items_in_batch
