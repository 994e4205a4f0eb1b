"""Where the consistency term meets the model's inputs and outputs.

The term reaches the loss in whatever container the model returns it; each pass gets its
own copy of mapping arguments; a forward that returns the same object from both passes is
refused.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, MutableMapping
from typing import Any

from torch import Tensor

from rxf.errors import RXFError


def loss_of(output: Any) -> Tensor | None:
    """The loss a forward returned: ``.loss`` / ``["loss"]``, or the first element of a
    plain tuple or list when it is a 0-dim floating-point tensor (``return_dict=False``)."""
    if isinstance(output, Mapping):
        loss = output.get("loss")
    elif isinstance(output, (tuple, list)) and not hasattr(output, "_fields"):
        loss = output[0] if output else None
        if not (isinstance(loss, Tensor) and loss.dim() == 0 and loss.is_floating_point()):
            loss = None
    else:
        loss = getattr(output, "loss", None)
    return loss if isinstance(loss, Tensor) else None


def with_term(output: Any, term: Tensor, task_loss: Tensor | None = None) -> tuple[Any, bool]:
    """``output`` with ``term`` added to the loss it holds, and whether it held one.

    ``task_loss`` replaces the held loss before the term is added (R-Drop: the two passes'
    losses averaged).

    Mappings (incl. ``ModelOutput``) and objects with a settable ``loss`` are updated in
    place; frozen dataclasses, named tuples, tuples and lists are rebuilt.

    Raises:
        RXFError: the output holds a loss in a container rxf cannot update.
    """
    loss = loss_of(output)
    if loss is None:
        return output, False
    total = (loss if task_loss is None else task_loss) + term
    if isinstance(output, MutableMapping):
        output["loss"] = total
    elif isinstance(output, tuple) and hasattr(output, "_replace"):
        output = output._replace(loss=total)
    elif isinstance(output, (tuple, list)):
        output = type(output)([total, *output[1:]])
    elif dataclasses.is_dataclass(output) and _frozen(output):
        output = dataclasses.replace(output, loss=total)  # type: ignore[type-var]
    else:
        try:
            output.loss = total
        except AttributeError as exc:
            raise RXFError(
                f"rxf cannot add the consistency term to the loss of a "
                f"{type(output).__name__}: its 'loss' cannot be set ({exc}). Return a dict, "
                f"a dataclass or a tuple, or compute the loss outside the model and add "
                f"model.consistency_loss to it."
            ) from exc
    return output, True


def _frozen(instance: Any) -> bool:
    params = getattr(type(instance), "__dataclass_params__", None)
    return bool(getattr(params, "frozen", False))


def own_copies(values: Any) -> Any:
    """Shallow copies of mapping arguments, so each pass has its own (a forward that writes
    its outputs into its input mapping and returns it cannot overwrite the other pass's)."""
    if isinstance(values, dict) and type(values) is dict:
        return {k: copy.copy(v) if isinstance(v, MutableMapping) else v for k, v in values.items()}
    return tuple(copy.copy(v) if isinstance(v, MutableMapping) else v for v in values)


def check_distinct(clean: Any, noisy: Any, model: str) -> None:
    """Refuse a forward that returned the same object from the clean and the noisy pass.

    Raises:
        RXFError: ``clean is noisy``; names the model and the fix.
    """
    if clean is noisy:
        raise RXFError(
            f"{model} returned the same object from the clean and the noisy pass, so the noisy "
            f"pass overwrote the clean output and the consistency term would be 0. Return a "
            f"new output object from forward (not one of its arguments, mutated)."
        )
