"""The scoped forward hook that adds noise to a module's output (all of it, or a row slice)."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from rxf.errors import RXFError
from rxf.noise import NoiseSampler

EmbeddingCalls = Literal["all", "first"]


@dataclass
class PerturbationRecord:
    """What the hook saw during one scope (detached tensors, no host sync).

    ``calls`` counts the module's forward calls inside the scope, ``perturbed`` those that
    got noise: every call with ``calls="all"``, the first with ``calls="first"`` (the
    encoder's lookup when an encoder and a decoder share one module). The levels are those
    of the first perturbed call.
    """

    calls: int = 0
    perturbed: int = 0
    dtype: torch.dtype | None = None
    signal_rms: Tensor | None = None
    noise_rms: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


CallKey = tuple[Any, ...]
# (the input itself, kept alive so no other tensor can take its address; its key; the
# output; the output's version counter when it was produced)
Cached = tuple[Tensor, CallKey, Tensor, int]


def reusable(module: nn.Module) -> bool:
    """Whether ``module``'s output is a function of its input tensor and weight alone, so a
    later pass of the same training forward may reuse an earlier pass's output for the same
    input: a plain ``nn.Embedding`` (its own forward, no ``max_norm`` renormalization)."""
    return (
        isinstance(module, nn.Embedding)
        and type(module).forward is nn.Embedding.forward
        and module.max_norm is None
    )


def _call_key(args: Any) -> CallKey | None:
    """Identifies a call's input tensor without reading it (no host sync): storage address,
    shape, strides, dtype, device and version counter (an in-place change bumps it)."""
    if len(args) != 1 or not isinstance(args[0], Tensor) or args[0].is_inference():
        return None  # inference tensors keep no version counter: never reused
    ids = args[0]
    return (ids.data_ptr(), tuple(ids.shape), ids.stride(), ids.dtype, ids.device, ids._version)


@contextmanager
def capture_outputs(module: nn.Module) -> Iterator[list[Cached]]:
    """Record each call's input key and output (the clean pass's lookups), for
    :func:`perturb`'s ``reuse``: a later pass's lookup of the same ids then reuses the clean
    output, so autograd sums both passes' gradients before the one scatter into the table
    instead of building a second dense table gradient (same values; summation order only)."""
    cache: list[Cached] = []

    def hook(mod: nn.Module, args: Any, output: Any) -> None:
        key = _call_key(args)
        if key is not None and isinstance(output, Tensor) and not output.is_inference():
            cache.append((args[0], key, output, output._version))

    handle = module.register_forward_hook(hook)
    try:
        yield cache
    finally:
        handle.remove()


def _reused(reuse: list[Cached] | None, index: int, args: Any, fresh: Any) -> Any:
    """The cached output of call ``index`` when the input is the same and the output was not
    changed in place since; else ``fresh``."""
    if reuse is None or index >= len(reuse) or not isinstance(fresh, Tensor):
        return fresh
    _, key, output, version = reuse[index]
    if key != _call_key(args) or output._version != version or output.shape != fresh.shape:
        return fresh
    return output


@contextmanager
def substitute(module: nn.Module, reuse: list[Cached]) -> Iterator[None]:
    """Replace ``module``'s outputs by the cached outputs of the same calls (R-Drop's second
    pass: no noise, the clean lookups reused; see :func:`capture_outputs`)."""
    calls = [0]

    def hook(mod: nn.Module, args: Any, output: Any) -> Any:
        calls[0] += 1
        found = _reused(reuse, calls[0] - 1, args, output)
        return None if found is output else found

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def add_noise(output: Tensor, noise: Tensor, detach: bool) -> Tensor:
    """``output (+ detached) + noise``, added in float32 (float64 for float64 outputs) and
    cast back to ``output``'s dtype.

    With ``detach`` no gradient reaches ``output``'s producer through the result, but the
    result still requires grad whenever ``output`` does: a reentrant activation checkpoint
    (``torch.utils.checkpoint(..., use_reentrant=True)``) keeps the graph of a segment only
    when one of its tensor inputs requires grad, so a detached input would silently drop the
    noisy pass's gradient for every checkpointed layer.

    Args:
        output: the module's output, any floating dtype, any shape.
        noise: float32 noise of ``output``'s shape.
        detach: stop the gradient into ``output`` (R3F's classification criterion).

    Example:
        >>> x = torch.ones(2, requires_grad=True)
        >>> y = add_noise(x * 2, torch.zeros(2), detach=True)
        >>> y.requires_grad, y.grad_fn is None
        (True, True)
    """
    base = output.detach() if detach else output
    work = torch.promote_types(base.dtype, torch.float32)
    noisy = base + noise if base.dtype == work else (base.to(work) + noise).to(base.dtype)
    if detach and output.requires_grad and torch.is_grad_enabled():
        noisy.requires_grad_(True)  # a leaf: the gradient stops here, the graph does not
    return noisy


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


def split_embedding_output(
    module: nn.Module, output: Any
) -> tuple[Tensor, Callable[[Tensor], Any]]:
    """The tensor of an embedding module's output that gets the noise, and how to put a
    replacement back.

    A floating-point tensor is itself; a tuple/list (incl. named tuples), a mapping (incl.
    Hugging Face ``ModelOutput``) or a dataclass gives its **first** floating-point tensor
    (patch embeddings that return ``(embeddings, extra)``); the other items pass through
    untouched.

    Raises:
        TypeError: no floating-point tensor in ``output``; names the module and the fix.

    Example:
        >>> t, put = split_embedding_output(nn.Identity(), (torch.ones(2), (3, 4)))
        >>> put(t * 0)
        (tensor([0., 0.]), (3, 4))
    """
    if isinstance(output, Tensor) and output.is_floating_point():
        return output, lambda new: new
    found = _first_floating(output)
    if found is None:
        raise TypeError(
            f"rxf can only add noise to a floating-point tensor, but {type(module).__name__} "
            f"returned {type(output).__name__} with none inside; point RXFConfig(embedding=...) "
            f"at the module that returns the embeddings."
        )
    key, tensor = found
    return tensor, lambda new: _replace(output, key, new)


def _first_floating(output: Any) -> tuple[Any, Tensor] | None:
    if isinstance(output, Mapping):
        items: list[tuple[Any, Any]] = list(output.items())
    elif isinstance(output, (tuple, list)):
        items = list(enumerate(output))
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        items = [(f.name, getattr(output, f.name)) for f in dataclasses.fields(output)]
    else:
        return None
    for key, value in items:
        if isinstance(value, Tensor) and value.is_floating_point():
            return key, value
    return None


def _replace(output: Any, key: Any, new: Tensor) -> Any:
    if isinstance(output, Mapping):
        copied: Any = copy.copy(output)
        copied[key] = new
        return copied
    if isinstance(output, tuple) and hasattr(output, "_replace"):  # named tuple
        fields: tuple[str, ...] = getattr(output, "_fields", ())
        return output._replace(**{fields[key]: new})
    if isinstance(output, (tuple, list)):
        items = list(output)
        items[key] = new
        return type(output)(items)
    return dataclasses.replace(output, **{key: new})


@contextmanager
def perturb(
    module: nn.Module,
    sampler: NoiseSampler,
    eps: float,
    *,
    detach: bool = True,
    rows: slice | None = None,
    expect_rows: int | None = None,
    calls: EmbeddingCalls = "all",
    layout: Mapping[str, Tensor | None] | None = None,
    reuse: list[Cached] | None = None,
) -> Iterator[PerturbationRecord]:
    """Add ``sampler`` noise to ``module``'s output while the context is open.

    The hook is removed on exit, also when the forward inside raises. With ``detach`` the
    noisy output is ``output.detach() + z``: no gradient reaches the module through it (it
    still requires grad when the output did, see :func:`add_noise`). ``rows`` restricts the
    noise to a slice of the batch dimension (concat mode: the second half); the other rows
    pass through untouched, gradient included; ``expect_rows`` makes any other batch size an
    error. ``calls="all"`` perturbs every call of the
    module in the scope (a bi-encoder embedding two texts with one table), ``"first"`` only
    the first (an encoder and a decoder sharing one embedding module). ``layout`` holds the
    noise's declared extras (``mask``, ``lengths``, see :mod:`rxf.noise`); each is passed to
    the sampler only for calls whose output it fits.

    Args:
        module: the embedding module (its output: a floating tensor, or a container of one,
            see :func:`split_embedding_output`).
        sampler: a :class:`rxf.noise.NoiseSampler`.
        eps: the noise scale.
        detach: add the noise to ``output.detach()``.
        rows: the batch rows that get noise (all when ``None``).
        expect_rows: the batch size the output must have (concat mode's doubled batch).
        calls: ``"all"`` or ``"first"`` calls of the module in the scope.
        layout: the noise's declared extras (``mask``, ``lengths``), by name.
        reuse: the clean pass's outputs (:func:`capture_outputs`): a call with the same
            input gets the noise on the clean output instead of its own lookup.

    Yields:
        The :class:`PerturbationRecord` of the scope, filled as the module is called.

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
        if calls == "first" and record.calls > 1:
            return None
        output = _reused(reuse, record.calls - 1, args, output)
        tensor, put_back = split_embedding_output(mod, output)
        if expect_rows is not None and (tensor.dim() == 0 or tensor.shape[0] != expect_rows):
            raise RXFError(
                f"concat mode: the embedding output has shape {tuple(tensor.shape)}, expected "
                f"the doubled batch {expect_rows} first. Use RXFConfig(mode='two_pass')."
            )
        target = tensor if rows is None else tensor[rows]
        extras = {k: v for k, v in (layout or {}).items() if _fits(v, target)}
        noise = sampler(target, eps, **extras)
        if not isinstance(noise, Tensor) or noise.shape != target.shape:
            got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
            raise RXFError(
                f"the noise sampler {getattr(sampler, '__name__', sampler)!r} returned {got} "
                f"for embeddings of shape {tuple(target.shape)}; a noise type must return a "
                f"float32 tensor of the embeddings' shape (see rxf.noise)."
            )
        noisy = add_noise(target, noise, detach)
        if record.perturbed == 0:
            record_levels(record, target, noisy, noise)
        record.perturbed += 1
        if rows is not None:
            start, stop, _ = rows.indices(tensor.shape[0])
            noisy = torch.cat([tensor[:start], noisy, tensor[stop:]])
        return put_back(noisy)

    handle = module.register_forward_hook(hook)
    try:
        yield record
    finally:
        handle.remove()


def _fits(extra: Tensor | None, target: Tensor) -> bool:
    return extra is not None and tuple(extra.shape) == tuple(target.shape[: extra.dim()])
