"""rxf: R3F and R4F fine-tuning regularizers for any PyTorch model.

Public names load on first use, so ``import rxf`` imports no framework (not even torch).

Example:
    >>> import rxf, torch
    >>> net = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 3))
    >>> model = rxf.wrap(net, eps=1e-3)
    >>> _ = model(torch.tensor([[1, 2]]))
    >>> rxf.unwrap(model) is net
    True
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rxf.config import RXFConfig
    from rxf.diagnosis import diagnose
    from rxf.discovery import first_submodule
    from rxf.errors import (
        RXFError,
        RXFPrecisionWarning,
        RXFUnusedTermWarning,
        RXFZeroTermWarning,
    )
    from rxf.explanation import Explanation, explain
    from rxf.hookspecs import hookimpl
    from rxf.inputs import IGNORE_INDEX, ForwardInputs
    from rxf.plugins import plugin_manager
    from rxf.wrapper import RXFModel, unwrap, wrap

_EXPORTS = {
    "IGNORE_INDEX": "rxf.inputs",
    "Explanation": "rxf.explanation",
    "ForwardInputs": "rxf.inputs",
    "RXFConfig": "rxf.config",
    "RXFError": "rxf.errors",
    "RXFModel": "rxf.wrapper",
    "RXFPrecisionWarning": "rxf.errors",
    "RXFUnusedTermWarning": "rxf.errors",
    "RXFZeroTermWarning": "rxf.errors",
    "diagnose": "rxf.diagnosis",
    "explain": "rxf.explanation",
    "first_submodule": "rxf.discovery",
    "hookimpl": "rxf.hookspecs",
    "plugin_manager": "rxf.plugins",
    "unwrap": "rxf.wrapper",
    "wrap": "rxf.wrapper",
}

__all__ = [
    "IGNORE_INDEX",
    "Explanation",
    "ForwardInputs",
    "RXFConfig",
    "RXFError",
    "RXFModel",
    "RXFPrecisionWarning",
    "RXFUnusedTermWarning",
    "RXFZeroTermWarning",
    "__version__",
    "diagnose",
    "explain",
    "first_submodule",
    "hookimpl",
    "plugin_manager",
    "unwrap",
    "wrap",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        return version("rxf")
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rxf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
