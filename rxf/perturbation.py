"""The scoped forward hook that adds noise to a module's output."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rxf.noise import NoiseSampler


@dataclass
class PerturbationRecord:
    """What the hook saw during one scope (detached tensors, no host sync).

    ``calls`` counts the module's forward calls inside the scope; only the first is
    perturbed (the encoder's lookup when an encoder and decoder share one table).
    """

    calls: int = 0
    dtype: torch.dtype | None = None
    signal_rms: Tensor | None = None
    noise_rms: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def add_noise(output: Tensor, noise: Tensor, detach: bool) -> Tensor:
    """``output (+ detached) + noise``, added in float32 and cast back to ``output``'s dtype."""
    base = output.detach() if detach else output
    if base.dtype == torch.float32:
        return base + noise
    return (base.float() + noise).to(base.dtype)


def record_levels(record: PerturbationRecord, output: Tensor, noisy: Tensor, noise: Tensor) -> None:
    """Store ``output``'s dtype and the RMS of the signal and of the noise that reached the
    model: fused reductions, no host sync.

    For half-precision outputs the noise is measured after the cast back (``noisy − output``
    in float32); in float32/64 that cast is the identity, so the sampled noise is measured.
    """
    with torch.no_grad():
        clean = output.detach()
        record.dtype = output.dtype
        record.signal_rms = _rms(clean)
        if output.dtype in (torch.float32, torch.float64):
            record.noise_rms = _rms(noise)
        else:
            record.noise_rms = _rms(noisy.detach().float() - clean.float())


def _rms(values: Tensor) -> Tensor:
    half = values.dtype in (torch.float16, torch.bfloat16)
    norm = torch.linalg.vector_norm(values, dtype=torch.float32 if half else None)
    return norm / math.sqrt(max(values.numel(), 1))


def check_embedding_output(module: nn.Module, output: Any) -> None:
    """Raise unless ``output`` is a floating-point tensor that noise can be added to."""
    if not isinstance(output, Tensor) or not output.is_floating_point():
        raise TypeError(
            f"rxf can only add noise to a floating-point tensor output, but "
            f"{type(module).__name__} returned {type(output).__name__}; point "
            f"RXFConfig(embedding=...) at the module that returns the embeddings."
        )


@contextmanager
def perturb(
    module: nn.Module,
    sampler: NoiseSampler,
    eps: float,
    *,
    detach: bool = True,
    mask: Tensor | None = None,
) -> Iterator[PerturbationRecord]:
    """Add ``sampler`` noise to ``module``'s output while the context is open.

    The hook is removed on exit, also when the forward inside raises. With ``detach`` the
    noisy output is ``output.detach() + z``, so no gradient reaches the module through it.

    Example:
        >>> from rxf.noise import uniform_noise
        >>> emb = nn.Embedding(10, 4)
        >>> with perturb(emb, uniform_noise, eps=0.1) as record:
        ...     noisy = emb(torch.tensor([1, 2]))
        >>> record.calls, bool((noisy - emb(torch.tensor([1, 2]))).abs().max() <= 0.1)
        (1, True)
    """
    record = PerturbationRecord()

    def hook(mod: nn.Module, args: Any, output: Any) -> Any:
        record.calls += 1
        if record.calls > 1:
            return None
        check_embedding_output(mod, output)
        noise = sampler(output, eps, mask=mask)
        noisy = add_noise(output, noise, detach)
        record_levels(record, output, noisy, noise)
        return noisy

    handle = module.register_forward_hook(hook)
    try:
        yield record
    finally:
        handle.remove()
