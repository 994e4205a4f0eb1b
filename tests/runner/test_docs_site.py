"""The docs site: the generated config reference covers every field, the mkdocs hook
expands its markers, and the nav lists every page."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from rxf_runner.config import FinetuneConfig, ProbeConfig

from rxf import RXFConfig

ROOT = Path(__file__).resolve().parents[2]


def nested_models(cls: type[BaseModel]) -> set[type[BaseModel]]:
    found = {cls}
    for info in cls.model_fields.values():
        stack = [info.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                if annotation not in found and annotation is not RXFConfig:
                    found |= nested_models(annotation)
            else:
                stack += list(getattr(annotation, "__args__", ()))
    return found


def _hook() -> Any:
    spec = importlib.util.spec_from_file_location(
        "config_reference", ROOT / "docs" / "hooks" / "config_reference.py"
    )
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    return hook


def test_reference_lists_every_field_of_every_section() -> None:
    render = _hook().render
    for config in (FinetuneConfig, ProbeConfig):
        text = render(f"rxf_runner.config.{config.__name__}")
        for model in nested_models(config):
            assert text.count(f"### `{model.__name__}`") == 1, model
            table = text.split(f"### `{model.__name__}`", 1)[1].split("\n### ", 1)[0]
            for name, info in model.model_fields.items():
                assert f"| `{name}` |" in table, f"{model.__name__}.{name}"
                assert info.description, f"{model.__name__}.{name} has no description"
        assert "[`RXFConfig`](config.md)" in text
    text = render("rxf_runner.config.TrainSettings")
    assert '| `schedule` | `"linear"`, `"cosine"` or `"constant"` | `linear` |' in text
    assert "| `max_grad_norm` | number or null | `1.0` |" in text


def test_mkdocs_hook_expands_the_markers_in_the_cli_page() -> None:
    spec = importlib.util.spec_from_file_location(
        "config_reference", ROOT / "docs" / "hooks" / "config_reference.py"
    )
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = (ROOT / "docs" / "cli.md").read_text()
    assert "<!-- rxf-config-reference: rxf_runner.config.FinetuneConfig -->" in page
    out = hook.on_page_markdown(page, page=None, config=None, files=None)
    assert "rxf-config-reference" not in out
    for model in nested_models(FinetuneConfig) | nested_models(ProbeConfig):
        assert out.count(f"### `{model.__name__}`") == 1, model  # once per page


def test_nav_lists_every_page_and_uses_the_hook() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["theme"]["name"] == "material" and config["strict"] is True
    assert "docs/hooks/config_reference.py" in config["hooks"]

    def pages(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, dict):
            return [p for v in nav.values() for p in pages(v)]
        return [p for v in nav for p in pages(v)] if isinstance(nav, list) else []

    listed = pages(config["nav"])
    assert len(listed) == len(set(listed))
    on_disk = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert on_disk <= set(listed), f"pages missing from the nav: {on_disk - set(listed)}"
    for mine in ("index.md", "cli.md"):
        assert mine in on_disk
