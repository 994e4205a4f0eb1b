"""``rxf explain MODEL``: build the model as ``rxf finetune`` would and print rxf.explain.

Example:
    >>> print(explain_model("minilm"))  # doctest: +SKIP
"""

from __future__ import annotations

from pydantic import ValidationError

from rxf_runner.config import ModelSettings
from rxf_runner.loading import ConfigError


def explain_model(name: str, num_labels: int = 2, r4f: bool = False) -> str:
    """The rxf.explain table of the model called ``name`` (built-in, folder or timm name)."""
    import rxf
    from rxf_runner import models

    settings = _settings(name)
    task = models.build(settings, num_labels)
    return f"{name}\n{rxf.explain(task.module, spectral_norm_head=r4f)}"


def _settings(name: str) -> ModelSettings:
    try:
        return ModelSettings(name=name)
    except ValidationError as exc:
        first = exc.errors()[0]["msg"].removeprefix("Value error, ")
    if ":" not in name and not name.startswith((".", "/", "~")):
        try:
            import timm

            if timm.is_model(name):
                return ModelSettings(name=f"timm:{name}")
        except ImportError:
            pass
    raise ConfigError(f"model: {first}")
