"""Which modules rxf hooks: the embedding (noise) and the head (R4F), by path or by plugin."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from rxf import plugins
from rxf.config import RXFConfig
from rxf.errors import RXFError


@dataclass
class Targets:
    """The modules chosen for a model and their dotted paths (``rxf.explain`` says who chose
    them)."""

    embedding: nn.Module
    embedding_name: str
    head: nn.Module | None = None
    head_name: str | None = None
    spectral_linears: list[nn.Linear] = field(default_factory=list)


def module_path(model: nn.Module, module: nn.Module) -> str:
    """The dotted path of ``module`` inside ``model`` ("" for the model itself)."""
    for name, candidate in model.named_modules(remove_duplicate=False):
        if candidate is module:
            return name
    raise RXFError(
        f"the plugin-proposed module {type(module).__name__} is not a submodule of "
        f"{type(model).__name__}"
    )


def first_submodule(root: nn.Module, paths: Iterable[str]) -> nn.Module | None:
    """The submodule at the first of ``paths`` (dotted) that exists in ``root``, or ``None``.

    Example:
        >>> net = nn.Sequential()
        >>> net.add_module("stem", nn.Conv2d(3, 4, 1))
        >>> type(first_submodule(net, ["patch_embed", "stem"])).__name__
        'Conv2d'
    """
    for path in paths:
        try:
            return root.get_submodule(path)
        except AttributeError:
            continue
    return None


def resolve_path(model: nn.Module, path: str, field_name: str) -> nn.Module:
    """``model.get_submodule(path)`` with an error that names the field and close matches."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(path, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise RXFError(
            f"RXFConfig.{field_name}={path!r}: {type(model).__name__} has no submodule at that "
            f"path.{hint} List them with [n for n, _ in model.named_modules()]."
        ) from None


def _find_embedding(model: nn.Module, cfg: RXFConfig) -> tuple[nn.Module, str]:
    if cfg.embedding is not None:
        return resolve_path(model, cfg.embedding, "embedding"), cfg.embedding
    module = plugins.find_embedding(model)
    if module is None and cfg.method == "rdrop":
        return model, ""  # R-Drop adds no noise: any model with dropout will do
    if module is None:
        candidates = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
        hint = f" Candidates: {', '.join(candidates[:5])}." if candidates else ""
        raise RXFError(
            f"rxf found no token embedding in {type(model).__name__}: no plugin recognises it. "
            f"Name it explicitly, e.g. RXFConfig(embedding='encoder.embed_tokens').{hint}"
        )
    return module, module_path(model, module)


def _find_head(model: nn.Module, cfg: RXFConfig) -> tuple[nn.Module, str]:
    if cfg.head is not None:
        return resolve_path(model, cfg.head, "head"), cfg.head
    module = plugins.find_head(model)
    if module is None:
        raise RXFError(
            f"R4F (spectral_norm_head=True) needs the classification head, but no plugin "
            f"recognises the head of {type(model).__name__}; name it, e.g. "
            f"RXFConfig(head='classifier')."
        )
    return module, module_path(model, module)


def discover(model: nn.Module, cfg: RXFConfig) -> Targets:
    """Find the embedding (and the head when R4F is on); changes nothing (``wrap`` applies).

    Checks the config's registered names first (:func:`rxf.plugins.check_registered_names`).
    """
    plugins.check_registered_names(cfg)
    targets = Targets(*_find_embedding(model, cfg))
    if cfg.head is not None and not cfg.spectral_norm_head:
        resolve_path(model, cfg.head, "head")  # a wrong path is an error even with R4F off
    if cfg.spectral_norm_head:
        targets.head, targets.head_name = _find_head(model, cfg)
        if targets.head is targets.embedding:
            raise RXFError(
                f"the head {targets.head_name!r} is the embedding module; point "
                f"RXFConfig(head=...) at the classification head"
            )
    return targets
