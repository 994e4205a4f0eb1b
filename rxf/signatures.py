"""The wrapper shows the inner model's forward signature, on the instance and on the class.

Code that introspects a model's ``forward`` (Hugging Face's Trainer prunes dataset columns by
it and reads label names and ``return_loss`` from ``type(model).forward``; Lightning and
accelerate inspect it too) must see the inner model's parameters, not ``*args, **kwargs``.
The wrapper's forward is therefore copied under the inner signature, and the wrapper's class
is a subclass made once per inner class whose ``forward`` carries that signature.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

T = TypeVar("T", bound=type)
_CLASSES: dict[tuple[type, type], type] = {}


def forward_copy(base: Callable[..., Any], inner: inspect.Signature | None) -> types.FunctionType:
    """``base``'s code under the signature ``(self, *inner parameters)``.

    Example:
        >>> def f(self, *args, **kwargs): return args
        >>> g = forward_copy(f, inspect.signature(lambda input_ids, labels=None: None))
        >>> str(inspect.signature(g))
        '(self, input_ids, labels=None)'
    """
    code: Any = base
    fn = types.FunctionType(
        code.__code__, code.__globals__, code.__name__, code.__defaults__, code.__closure__
    )
    fn.__doc__, fn.__qualname__ = code.__doc__, code.__qualname__
    if inner is not None:
        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        fn.__signature__ = inner.replace(parameters=[self_param, *inner.parameters.values()])  # type: ignore[attr-defined]
    return fn


def forward_showing(base: Callable[..., Any], module: nn.Module) -> types.FunctionType:
    """A copy of ``base`` whose signature is ``module.forward``'s (for the instance)."""
    try:
        inner = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return forward_copy(base, None)
    return forward_copy(base, inner)


def subclass_showing(base: T, inner: type) -> T:
    """A subclass of ``base`` whose class-level ``forward`` shows ``inner.forward``'s
    parameters, made once per (base, inner class)."""
    cls = _CLASSES.get((base, inner))
    if cls is None:
        try:
            params = list(inspect.signature(inner.forward).parameters.values())[1:]  # type: ignore[attr-defined]
            signature: inspect.Signature | None = inspect.Signature(params)
        except (TypeError, ValueError, AttributeError):
            signature = None
        namespace = {
            "forward": forward_copy(base.forward, signature),  # type: ignore[attr-defined]
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "__doc__": base.__doc__,
        }
        cls = _CLASSES[(base, inner)] = type(base.__name__, (base,), namespace)
    return cls  # type: ignore[return-value]
