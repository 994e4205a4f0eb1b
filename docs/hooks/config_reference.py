"""mkdocs hook: replace ``<!-- rxf-config-reference: package.module.Class -->`` by the
tables of that pydantic model's fields (:func:`render`), so the reference is generated from
the code at every build. Works offline; no plugin to install.

Example:
    >>> text = render("rxf_runner.config.ModelSettings")
    >>> "| `max_length` | integer | `64` |" in text
    True
"""

from __future__ import annotations

import importlib
import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from rxf import RXFConfig

_LINKED = {RXFConfig: "config.md"}  # documented on their own page
_NAMES = {
    int: "integer",
    float: "number",
    str: "string",
    bool: "boolean",
    Path: "path",
    type(None): "null",
}


def render(dotted: str, seen: set[type] | None = None) -> str:
    """Tables for the model at ``dotted`` (``package.module.Class``) and every model nested
    in it that is not in ``seen`` (which is updated)."""
    module, _, name = dotted.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        raise TypeError(f"{dotted} is not a pydantic model")
    seen = set() if seen is None else seen
    return "\n".join(_sections(cls, seen, level=3))


def _sections(cls: type[BaseModel], seen: set[type], level: int) -> list[str]:
    seen.add(cls)
    doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
    lines = [
        f"{'#' * level} `{cls.__name__}`",
        "",
        doc,
        "",
        "| field | type | default | meaning |",
        "|---|---|---|---|",
    ]
    nested: list[type[BaseModel]] = []
    for field_name, info in cls.model_fields.items():
        models = _models_in(info.annotation)
        nested += [m for m in models if m not in seen and m not in _LINKED and m not in nested]
        meaning = (info.description or "").replace("|", "\\|")
        links = [
            f"[`{m.__name__}`]({_LINKED[m]})"
            if m in _LINKED
            else f"[`{m.__name__}`](#{m.__name__.lower()})"
            for m in models
        ]
        if links:
            meaning += " See " + ", ".join(links) + "."
        lines.append(
            f"| `{field_name}` | {_type(info.annotation)} | {_default(info)} | {meaning} |"
        )
    lines.append("")
    for model in nested:
        if model not in seen:
            lines += _sections(model, seen, level)
    return lines


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        quoted = [f'`"{a}"`' for a in args]
        return ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in args)
    if origin is list:
        return f"list of {_type(args[0])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(info: Any) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    value = info.default if info.default_factory is None else info.default_factory()
    if isinstance(value, BaseModel):
        return "(see its fields)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return f"{len(value)} entries (see `rxf probe --print-config`)"
    return f"`{_yaml(value)}`"


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


MARKER = re.compile(r"<!--\s*rxf-config-reference:\s*([\w.]+)\s*-->")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    seen: set[type] = set()  # each model once per page
    return MARKER.sub(lambda match: render(match.group(1), seen), markdown)
