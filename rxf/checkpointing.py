"""Activation checkpointing under rxf: the combination DDP's reducer cannot take.

Two-pass R3F runs every checkpointed layer twice in one DDP forward; with *reentrant*
checkpointing each pass's recomputation marks the layer's parameters ready in the same
backward, which a non-static DDP rejects ("Expected to mark a variable ready only once").
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rxf.errors import RXFError


def check_ddp_reentrant(logits: Tensor, checked: dict[str, int]) -> None:
    """Refuse two passes with reentrant checkpointing inside a non-static DDP forward.

    Looks at the DDP module whose forward is running (``DistributedDataParallel`` keeps it
    while it calls the wrapped module), once per DDP instance (``checked`` remembers it).

    Args:
        logits: the clean pass's logits, whose graph is searched.
        checked: a per-wrapper memo.

    Raises:
        RXFError: the combination, with the three fixes.
    """
    ddp: Any = getattr(nn.parallel.DistributedDataParallel, "_active_ddp_module", None)
    if ddp is None or getattr(ddp, "static_graph", False) or checked.get("ddp") == id(ddp):
        return
    checked["ddp"] = id(ddp)
    if has_reentrant_checkpoint(logits):
        raise RXFError(
            "two-pass R3F under DistributedDataParallel with reentrant gradient "
            "checkpointing (use_reentrant=True): both passes re-run the checkpointed layers "
            "in one backward, so DDP would mark their parameters ready twice ('Expected to "
            "mark a variable ready only once'). Use RXFConfig(mode='concat') (one forward), "
            "DDP(..., static_graph=True), or use_reentrant=False."
        )


def has_reentrant_checkpoint(logits: Tensor) -> bool:
    """Whether ``logits``' graph holds a reentrant ``torch.utils.checkpoint`` segment."""
    seen: set[int] = set()
    stack = [logits.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if type(node).__name__ == "CheckpointFunctionBackward":
            return True
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return False
