"""The cached plugin manager and a typed facade over its hooks.

Plugins are found lazily, on first use (never at ``import rxf``): the built-in defaults,
then every entry point in the ``rxf`` group. ``RXF_DISABLE_PLUGINS`` blocks entry points by
name (comma-separated), or all of them with ``*``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

from rxf import hookspecs
from rxf.errors import RXFError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from rxf.divergence import Divergence
    from rxf.inputs import ForwardInputs
    from rxf.noise import NoiseSampler

DISABLE_ENV = "RXF_DISABLE_PLUGINS"
_manager: pluggy.PluginManager | None = None


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created (and entry points loaded) on first call.

    Example:
        >>> import rxf
        >>> pm = rxf.plugin_manager()
        >>> "rxf.defaults" in [pm.get_name(p) for p in pm.get_plugins()]
        True
    """
    global _manager
    if _manager is None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        from rxf import defaults

        pm.register(defaults, name="rxf.defaults")
        blocked = [n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()]
        if "*" not in blocked:
            for name in blocked:
                pm.set_blocked(name)
            pm.load_setuptools_entrypoints(hookspecs.PROJECT)
        _manager = pm
    return _manager


def reset_plugin_manager() -> None:
    """Forget the cached manager; the next use rediscovers plugins (for tests)."""
    global _manager
    _manager = None


def _first_result(hook_name: str, **kwargs: Any) -> tuple[Any, str | None]:
    """Call a firstresult hook's implementations in pluggy's order; return (result, plugin)."""
    pm = plugin_manager()
    hook = getattr(pm.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:
            continue
        result = impl.function(*(kwargs[name] for name in impl.argnames))
        if result is not None:
            return result, impl.plugin_name
    return None, None


def find_embedding(model: nn.Module) -> tuple[nn.Module | None, str | None]:
    """The embedding module plugins propose for ``model``, and the plugin that answered."""
    return _first_result("rxf_find_embedding", model=model)


def find_head(model: nn.Module) -> tuple[nn.Module | None, str | None]:
    """The classification head plugins propose for ``model``, and the plugin that answered."""
    return _first_result("rxf_find_head", model=model)


def extract_logits(model: nn.Module, output: Any) -> Tensor | None:
    """The logits inside a forward's ``output``, or ``None``."""
    result: Tensor | None = plugin_manager().hook.rxf_extract_logits(model=model, output=output)
    return result


def token_mask(model: nn.Module, inputs: ForwardInputs, output: Any) -> Tensor | None:
    """Which logits positions count for a token-level divergence (``None``: all)."""
    result: Tensor | None = plugin_manager().hook.rxf_token_mask(
        model=model, inputs=inputs, output=output
    )
    return result


def input_mask(model: nn.Module, inputs: ForwardInputs) -> Tensor | None:
    """Which input tokens are real (not padding), or ``None``."""
    result: Tensor | None = plugin_manager().hook.rxf_input_mask(model=model, inputs=inputs)
    return result


def sequence_starts(model: nn.Module, inputs: ForwardInputs) -> Tensor | None:
    """Where packed sequences begin in the input rows, or ``None`` (one per row)."""
    result: Tensor | None = plugin_manager().hook.rxf_sequence_starts(model=model, inputs=inputs)
    return result


def embedding_calls(model: nn.Module) -> str:
    """``"all"`` or ``"first"``: which embedding calls of a noisy pass get noise."""
    result = plugin_manager().hook.rxf_embedding_calls(model=model)
    if result not in ("all", "first"):
        raise RXFError(f"rxf_embedding_calls returned {result!r}; expected 'all' or 'first'")
    return str(result)


def _merged_registry(hook_name: str, kind: str) -> dict[str, Callable[..., Any]]:
    pm = plugin_manager()
    hook = getattr(pm.hook, hook_name)
    merged: dict[str, Callable[..., Any]] = {}
    owner: dict[str, str] = {}
    for impl in reversed(hook.get_hookimpls()):
        for name, factory in (impl.function() or {}).items():
            if name in merged:
                raise RXFError(
                    f"{kind} {name!r} is registered twice, by plugins {owner[name]!r} and "
                    f"{impl.plugin_name!r}; rename one of them or block a plugin with "
                    f"{DISABLE_ENV}."
                )
            merged[name], owner[name] = factory, impl.plugin_name
    return merged


def noise_types() -> dict[str, NoiseSampler]:
    """Every registered noise sampler by name."""
    return _merged_registry("rxf_register_noise_types", "noise type")


def divergences() -> dict[str, Divergence]:
    """Every registered divergence by name."""
    return _merged_registry("rxf_register_divergences", "divergence")
