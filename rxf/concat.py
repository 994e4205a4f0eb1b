"""The "concat" mode: clean and noisy copies of a batch run as one doubled batch.

One forward over ``cat([x, x])`` with noise on the second half of the embedding output gives
the clean and the noisy logits at once. It is exact (same loss, same gradients as two
passes) when no layer couples the examples of a batch; BatchNorm in training mode does, so
such models are refused (:func:`check_batch_independent`).

The model's own loss must cover the clean half only. rxf passes ``labels`` as
``cat([labels, full_like(labels, -100)])``: every loss that ignores the index -100 (PyTorch's
``cross_entropy`` default, all Hugging Face heads) then equals the clean batch's loss exactly.
Seq2seq models that derive decoder inputs from the labels get those built from the real
labels first, by their adapter (the ``rxf_prepare_concat_inputs`` hook).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from rxf.errors import RXFError
from rxf.inputs import IGNORE_INDEX, ForwardInputs

LABELS = "labels"


def batch_size_of(inputs: ForwardInputs) -> int:
    """The first dimension of the first tensor argument (positional, then keyword).

    Example:
        >>> batch_size_of(ForwardInputs((torch.zeros(3, 5, dtype=torch.long),), {}))
        3
    """
    for value in (*inputs.args, *inputs.kwargs.values()):
        found = _first_batched(value)
        if found is not None:
            return int(found.shape[0])
    raise RXFError(
        "concat mode needs a batched tensor argument (e.g. input_ids) to double; this forward "
        "got none. Use RXFConfig(mode='two_pass')."
    )


def _first_batched(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value if value.dim() > 0 else None
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_batched(item)
            if found is not None:
                return found
    return None


def double_inputs(inputs: ForwardInputs, batch: int) -> ForwardInputs:
    """``inputs`` with every batch-first tensor repeated as ``cat([t, t])``.

    ``labels`` become ``cat([labels, -100…])`` so the model's loss sees the clean half only;
    floating-point labels (regression, multi-label) cannot be masked that way and are refused.

    Example:
        >>> ids = torch.tensor([[1, 2]])
        >>> doubled = double_inputs(ForwardInputs((ids,), {"labels": torch.tensor([1])}), 1)
        >>> doubled.args[0].tolist(), doubled.kwargs["labels"].tolist()
        ([[1, 2], [1, 2]], [1, -100])
    """
    kwargs = {}
    for name, value in inputs.kwargs.items():
        if name == LABELS and isinstance(value, Tensor):
            kwargs[name] = _masked_labels(value, batch)
        else:
            kwargs[name] = _double(value, batch)
    return ForwardInputs(tuple(_double(a, batch) for a in inputs.args), kwargs)


def _masked_labels(labels: Tensor, batch: int) -> Tensor:
    if labels.is_floating_point():
        raise RXFError(
            "concat mode: floating-point labels (regression or multi-label) cannot be hidden "
            "from the model's loss on the noisy half. Use RXFConfig(mode='two_pass'), or call "
            "the model without labels and add model.consistency_loss to your own loss."
        )
    if labels.dim() == 0 or labels.shape[0] != batch:
        return labels
    return torch.cat([labels, torch.full_like(labels, IGNORE_INDEX)])


def _double(value: Any, batch: int) -> Any:
    if isinstance(value, Tensor):
        return torch.cat([value, value]) if value.dim() > 0 and value.shape[0] == batch else value
    if isinstance(value, Mapping):
        return type(value)({k: _double(v, batch) for k, v in value.items()})  # type: ignore[call-arg]
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(_double(v, batch) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_double(v, batch) for v in value)
    return value


def clean_half(output: Any, batch: int) -> Any:
    """The clean examples' part of a doubled-batch output: every ``2·batch``-first tensor
    sliced to its first half; scalars and other tensors as they are.

    Hugging Face ``ModelOutput`` objects (and other dicts) are updated in place, dataclasses
    and tuples rebuilt.

    Example:
        >>> clean_half((torch.arange(4.0), torch.tensor(1.0)), 2)
        (tensor([0., 1.]), tensor(1.))
    """
    if isinstance(output, Tensor):
        doubled = output.dim() > 0 and output.shape[0] == 2 * batch
        return output[:batch] if doubled else output
    if isinstance(output, dict):
        for key in list(output.keys()):
            output[key] = clean_half(output[key], batch)
        return output
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return type(output)(*(clean_half(v, batch) for v in output))
    if isinstance(output, (tuple, list)):
        return type(output)(clean_half(v, batch) for v in output)
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        changes = {  # rebuilt (frozen dataclasses included)
            f.name: clean_half(getattr(output, f.name), batch)
            for f in dataclasses.fields(output)
            if f.init
        }
        return dataclasses.replace(output, **changes)
    return output


def check_batch_independent(modules: list[tuple[str, nn.Module]]) -> None:
    """Refuse batch-coupled layers (BatchNorm in training mode): in one doubled batch the
    noisy copies would change the clean copies' normalization statistics."""
    for name, module in modules:
        if module.training:
            raise RXFError(
                f"concat mode: {name or 'the model'} ({type(module).__name__}) is in training "
                f"mode and normalizes over the batch, so clean and noisy copies would share "
                f"statistics. Use RXFConfig(mode='two_pass'), or put the normalization layers "
                f"in eval mode (frozen statistics)."
            )


def batch_norm_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every BatchNorm-like module (``_BatchNorm``, incl. SyncBatchNorm) of ``model``."""
    return [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
