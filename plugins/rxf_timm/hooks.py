"""Hook implementations for timm models, through timm's duck-typed model protocol.

A model is a timm model when its class lives in ``timm`` or it carries a
``pretrained_cfg`` mapping and a ``get_classifier()`` method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from rxf import RXFError, first_submodule, hookimpl

# The analogue of the token lookup: the patch embedding of ViT-style models, else the stem.
STEM_NAMES = ("patch_embed", "stem", "conv_stem")


def is_timm_model(model: nn.Module) -> bool:
    """Whether ``model`` follows timm's model protocol.

    Example:
        >>> is_timm_model(nn.Linear(2, 2))
        False
    """
    if type(model).__module__.split(".")[0] == "timm":
        return True
    return isinstance(getattr(model, "pretrained_cfg", None), Mapping) and callable(
        getattr(model, "get_classifier", None)
    )


def _cfg_path(model: nn.Module, key: str) -> Any:
    cfg = getattr(model, "pretrained_cfg", None)
    return cfg.get(key) if isinstance(cfg, Mapping) else None


def input_embedding(model: nn.Module) -> nn.Module | None:
    """``patch_embed`` (ViT, DeiT, Swin…), else ``stem`` (ConvNeXt, RegNet…), else
    ``conv_stem`` (EfficientNet, MobileNet), else ``pretrained_cfg["first_conv"]`` (ResNet's
    ``conv1``)."""
    found = first_submodule(model, STEM_NAMES)
    if found is not None:
        return found
    path = _cfg_path(model, "first_conv")
    if isinstance(path, str):
        try:
            return model.get_submodule(path)
        except AttributeError:
            return None
    return None


def _has_linear(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) for m in module.modules())


def classifier(model: nn.Module) -> nn.Module | None:
    """The classification head: ``get_classifier()``, else ``pretrained_cfg["classifier"]``.

    Raises :class:`rxf.RXFError` for a model with two heads (distilled DeiT) or none
    (``num_classes=0``).
    """
    getter = getattr(model, "get_classifier", None)
    found = getter() if callable(getter) else None
    if found is None:
        path = _cfg_path(model, "classifier")
        if isinstance(path, str):
            found = model.get_submodule(path)
    if isinstance(found, tuple):
        paths = _cfg_path(model, "classifier") or ()
        options = ", ".join(f"RXFConfig(head={p!r})" for p in paths) or "RXFConfig(head=...)"
        raise RXFError(
            f"{type(model).__name__} has {len(found)} classification heads; say which one R4F "
            f"normalizes: {options}."
        )
    if isinstance(found, nn.Module) and not _has_linear(found):
        raise RXFError(
            f"{type(model).__name__} has no Linear classifier (get_classifier() returned "
            f"{type(found).__name__}; num_classes=0?). Create it with num_classes=N or call "
            f"model.reset_classifier(N), or name the head with RXFConfig(head=...)."
        )
    return found if isinstance(found, nn.Module) else None


@hookimpl
def rxf_find_embedding(model: nn.Module) -> nn.Module | None:
    """The patch embedding or stem of a timm model (see :func:`input_embedding`)."""
    return input_embedding(model) if is_timm_model(model) else None


@hookimpl
def rxf_find_head(model: nn.Module) -> nn.Module | None:
    """The classifier of a timm model (see :func:`classifier`)."""
    return classifier(model) if is_timm_model(model) else None
