"""Reading a YAML config into its pydantic model, with one clear message on any mistake.

Example:
    >>> from rxf_runner.config import FinetuneConfig
    >>> load_config(None, FinetuneConfig).model.name
    'minilm'
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from rxf import RXFError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class ConfigError(RXFError):
    """A config that cannot run: raised before any model is loaded or trained."""


def load_config(path: str | Path | None, cls: type[ConfigT]) -> ConfigT:
    """Validate the YAML file at ``path`` (``None``: the embedded default) as ``cls``.

    Relative paths inside the file are read relative to the file's folder.
    """
    if path is None:
        return _validate(cls, {}, "default config", Path.cwd())
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the config must be a mapping of sections, got {type(data).__name__}"
        )
    return _validate(cls, data, str(path), path.resolve().parent)


def _validate(cls: type[ConfigT], data: dict[str, Any], source: str, base: Path) -> ConfigT:
    try:
        return cls.model_validate(data, context={"base_dir": base})
    except ValidationError as exc:
        lines = [_describe(cls, err) for err in exc.errors()]
        raise ConfigError(f"{source}: " + "\n  ".join(lines)) from None


def _describe(cls: type[BaseModel], err: Any) -> str:
    loc = [f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"]]
    where = ".".join(loc).replace(".[", "[") or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(cls, err["loc"][:-1])
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"unknown key {where!r}{did_you_mean} (allowed here: {', '.join(allowed)})"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{where}: missing (required)"
    given = err.get("input")
    own = err["type"] == "value_error"  # our validators already name the value
    shown = "" if own or isinstance(given, dict | list) else f" (got {given!r})"
    return f"{where}: {message}{shown}"


def _fields_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found by following ``loc`` from ``cls``."""
    current: Any = cls
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
        if current is None:
            return []
    return list(current.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
