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
_methods: tuple[pluggy.PluginManager, dict[str, Callable[..., Any]]] | None = None


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


def find_embedding(model: nn.Module) -> nn.Module | None:
    """The embedding module plugins propose for ``model`` (``rxf_find_embedding``)."""
    result: nn.Module | None = plugin_manager().hook.rxf_find_embedding(model=model)
    return result


def find_head(model: nn.Module) -> nn.Module | None:
    """The classification head plugins propose for ``model`` (``rxf_find_head``)."""
    result: nn.Module | None = plugin_manager().hook.rxf_find_head(model=model)
    return result


def answered_by(hook_name: str, result: Any, **kwargs: Any) -> str:
    """Which plugin gave ``result`` for a first-result hook (for :func:`rxf.explain` only).

    The implementations are asked again, one by one in pluggy's call order, until one
    returns ``result`` itself; a result that none of them returns came from a hook wrapper,
    whose plugins are named.
    """
    impls = list(reversed(getattr(plugin_manager().hook, hook_name).get_hookimpls()))
    wrappers = [i.plugin_name for i in impls if i.hookwrapper or i.wrapper]
    for impl in impls:
        if impl.hookwrapper or impl.wrapper:
            continue
        if impl.function(*(kwargs[name] for name in impl.argnames)) is result:
            return impl.plugin_name
    return "wrapper " + ", ".join(wrappers) if wrappers else "?"


def implementers(hook_name: str) -> list[str]:
    """The plugins implementing a hook, in the order pluggy calls them."""
    impls = getattr(plugin_manager().hook, hook_name).get_hookimpls()
    return [impl.plugin_name for impl in reversed(impls)]


def extract_logits(model: nn.Module, output: Any) -> Tensor | None:
    """The logits inside a forward's ``output``, or ``None``."""
    result: Tensor | None = plugin_manager().hook.rxf_extract_logits(model=model, output=output)
    return result


def token_mask(
    model: nn.Module, inputs: ForwardInputs, output: Any, logits: Tensor
) -> Tensor | None:
    """Which logits positions count for a token-level divergence (``None``: all)."""
    result: Tensor | None = plugin_manager().hook.rxf_token_mask(
        model=model, inputs=inputs, output=output, logits=logits
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


def prepare_concat_inputs(model: nn.Module, inputs: ForwardInputs) -> ForwardInputs:
    """The inputs concat mode doubles, completed by the plugins (decoder inputs, ...)."""
    result: ForwardInputs = plugin_manager().hook.rxf_prepare_concat_inputs(
        model=model, inputs=inputs
    )
    return result


def embedding_calls(model: nn.Module) -> str:
    """``"all"`` or ``"first"``: which embedding calls of a noisy pass get noise."""
    result = plugin_manager().hook.rxf_embedding_calls(model=model)
    if result not in ("all", "first"):
        raise RXFError(f"rxf_embedding_calls returned {result!r}; expected 'all' or 'first'")
    return str(result)


def _merged_registry(hook_name: str, kind: str) -> dict[str, Callable[..., Any]]:
    """Merge the dicts a registry hook returns (pluggy's call, wrappers included); a name
    offered twice is an error naming both plugins."""
    hook = getattr(plugin_manager().hook, hook_name)
    merged: dict[str, Callable[..., Any]] = {}
    for offered in hook():
        for name, factory in (offered or {}).items():
            if name in merged:
                owners = _owners(hook, name)
                raise RXFError(
                    f"{kind} {name!r} is registered twice, by plugins "
                    f"{' and '.join(map(repr, owners))}; rename one of them or block a plugin "
                    f"with {DISABLE_ENV}."
                )
            merged[name] = factory
    return merged


def _owners(hook: Any, name: str) -> list[str]:
    owners = []
    for impl in reversed(hook.get_hookimpls()):
        if not (impl.hookwrapper or impl.wrapper) and name in (impl.function() or {}):
            owners.append(impl.plugin_name)
    return owners


def registered(kind: str, name: str, field: str) -> Callable[..., Any]:
    """The noise type or divergence registered under ``name``.

    Raises:
        RXFError: unknown name; names the config field, the known names and the closest.

    Example:
        >>> registered("divergence", "kl", "divergence").__name__
        'kl_per_position'
    """
    registry: dict[str, Callable[..., Any]] = (
        noise_types() if kind == "noise type" else divergences()
    )
    if name in registry:
        return registry[name]
    import difflib

    close = difflib.get_close_matches(name, list(registry), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise RXFError(
        f"RXFConfig.{field}: unknown {field} {name!r}; known: {', '.join(sorted(registry))}."
        f"{hint} Register new ones with a plugin (see docs/plugins.md)."
    )


def check_registered_names(config: Any) -> None:
    """Check an :class:`rxf.RXFConfig`'s registered names (noise type, divergences).

    Raises:
        RXFError: the first unknown name, as :func:`registered` words it.
    """
    registered("noise type", config.noise_type, "noise_type")
    for field in ("divergence", "regression_divergence"):
        registered("divergence", getattr(config, field), field)


def wrapper_methods() -> dict[str, Callable[..., Any]]:
    """Every method plugins add to the wrapper, by name (cached with the manager)."""
    global _methods
    if _methods is None or _methods[0] is not plugin_manager():
        _methods = (plugin_manager(), _merged_registry("rxf_register_wrapper_methods", "method"))
    return _methods[1]


def noise_types() -> dict[str, NoiseSampler]:
    """Every registered noise sampler by name."""
    return _merged_registry("rxf_register_noise_types", "noise type")


def divergences() -> dict[str, Divergence]:
    """Every registered divergence by name."""
    return _merged_registry("rxf_register_divergences", "divergence")
