"""Replaying torch's random streams: the same dropout masks in two passes.

With ``RXFConfig(share_dropout_masks=True)`` the noisy pass starts from the RNG state the
clean pass started from, so every dropout layer draws the same mask in both passes (as
``torch.utils.checkpoint`` replays a segment). The noise itself is drawn from a separate
continuation of the stream, so drawing it does not shift the masks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


class RNGState:
    """The default generators' states of the CPU and (when given) one accelerator device.

    Example:
        >>> state = RNGState.capture(torch.device("cpu"))
        >>> a = torch.rand(2); state.restore(); b = torch.rand(2)
        >>> torch.equal(a, b)
        True
    """

    def __init__(self, cpu: Tensor, device: torch.device | None, device_state: Tensor | None):
        self.cpu, self.device, self.device_state = cpu, device, device_state

    @classmethod
    def capture(cls, device: torch.device) -> RNGState:
        """The current states of the CPU generator and of ``device``'s (CUDA only)."""
        if device.type == "cuda":
            return cls(torch.get_rng_state(), device, torch.cuda.get_rng_state(device))
        return cls(torch.get_rng_state(), None, None)

    def restore(self) -> None:
        """Put the captured states back."""
        torch.set_rng_state(self.cpu)
        if self.device is not None and self.device_state is not None:
            torch.cuda.set_rng_state(self.device_state, self.device)


@contextmanager
def replayed_stream(device: torch.device, start: RNGState) -> Iterator[Callable[..., Tensor]]:
    """Rewind the RNG to ``start`` for the body; yield ``draw(fn, *args)``, which runs ``fn``
    on the stream as it was when the context opened (so draws do not shift the replay).

    On exit the RNG continues from where the side stream ended: the global stream advances
    past the noise, as without replay.
    """
    side = RNGState.capture(device)

    def draw(fn: Callable[..., Tensor], *args: object, **kwargs: object) -> Tensor:
        nonlocal side
        here = RNGState.capture(device)
        side.restore()
        try:
            return fn(*args, **kwargs)
        finally:
            side = RNGState.capture(device)
            here.restore()

    start.restore()
    try:
        yield draw
    finally:
        side.restore()
