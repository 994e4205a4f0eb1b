"""The arguments of one forward call, as hooks see them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100
"""The label value that losses skip (PyTorch's ``cross_entropy`` default, Hugging Face's)."""


@dataclass(frozen=True)
class ForwardInputs:
    """Positional and keyword arguments of a forward call.

    Example:
        >>> inputs = ForwardInputs((1,), {"attention_mask": None})
        >>> inputs.get("input_ids", 0)
        1
    """

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, position: int | None = None) -> Any:
        """The argument passed as ``name=`` or, failing that, at ``position``; else ``None``."""
        if name in self.kwargs:
            return self.kwargs[name]
        if position is not None and position < len(self.args):
            return self.args[position]
        return None
