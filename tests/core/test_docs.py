"""The docs keep up with the code: every hook and every config field is documented."""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from rxf import hookspecs
from rxf.config import PRESETS, RXFConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"


def hook_names() -> list[str]:
    return [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("rxf_")]


def test_every_hook_is_documented_from_its_specification() -> None:
    assert "<!-- rxf-hooks-reference -->" in (DOCS / "plugins.md").read_text()
    reference = _docs_hook("hooks_reference")
    text = reference.render()
    names = hook_names()
    assert len(names) >= 10 and sorted(reference.hook_names()) == sorted(names)
    for name in names:
        spec = getattr(hookspecs, name)
        assert (spec.__doc__ and "Args:" in spec.__doc__) or not inspect.signature(spec).parameters
        section = text.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
        params = ", ".join(inspect.signature(spec).parameters)
        assert f"`{name}({params}) -> " in section, name
        first_sentence = " ".join(spec.__doc__.split("\n\n")[0].split()).replace("``", "`")
        assert first_sentence in " ".join(section.split()), name
        for param in inspect.signature(spec).parameters:
            assert f"- `{param}`: " in section, (name, param)


def _docs_hook(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, DOCS / "hooks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_config_reference_is_rendered_from_the_model() -> None:
    assert "<!-- rxf-config-reference: rxf.config.RXFConfig -->" in (DOCS / "config.md").read_text()
    table = _docs_hook("config_reference").render("rxf.config.RXFConfig")
    for name, field in RXFConfig.model_fields.items():
        assert field.description, f"RXFConfig.{name} has no description"
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        assert field.description.replace("|", "\\|") in row, name


def test_concept_pages_exist() -> None:
    for page in ("method.md", "config.md", "plugins.md"):
        assert (DOCS / page).read_text().startswith("# ")


def test_ci_runs_the_readme_commands() -> None:
    root = DOCS.parent
    readme = (root / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    install, tests = [line.strip() for line in setup.strip().splitlines()]
    ci = (root / ".ci" / "run").read_text().splitlines()
    assert install.startswith('pip install -e ".[all,test]"')
    assert 'pip install -e ".[all,test]"' in ci
    assert tests in ci, f"CI must run the README's test command {tests!r}"


METHOD_PAGES = ("index.md", "r3f.md", "rdrop.md", "smart.md", "neftune.md")
PRESET_PAGES = {"r3f": "r3f.md", "r4f": "r3f.md", "rdrop": "rdrop.md", "neftune": "neftune.md"}


def test_each_method_page_is_in_the_nav_and_linked_from_the_readme() -> None:
    root = DOCS.parent
    readme, nav = (root / "README.md").read_text(), (root / "mkdocs.yml").read_text()
    for page in METHOD_PAGES:
        assert (DOCS / "methods" / page).read_text().startswith("# "), page
        assert f"methods/{page}" in nav, f"mkdocs.yml nav lacks methods/{page}"
        assert f"(docs/methods/{page})" in readme, f"README.md does not link docs/methods/{page}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_is_documented_with_every_field_it_sets(name: str) -> None:
    text = (DOCS / "methods" / PRESET_PAGES.get(name, f"{name}.md")).read_text()
    assert f'RXFConfig.preset("{name}")' in text
    for field in PRESETS[name]:
        assert f"`{field}" in text, f"docs/methods: preset {name!r} sets {field!r}, undocumented"


@pytest.mark.parametrize("page", METHOD_PAGES)
def test_the_method_pages_examples_run(page: str) -> None:
    """Every ``python`` block of docs/methods/ runs as written (tiny models, no downloads)."""
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "methods" / page).read_text(), re.S)
    for number, block in enumerate(blocks, 1):
        if "from transformers" in block:
            pytest.importorskip("transformers")
        torch.manual_seed(0)
        code = compile(block, f"docs/methods/{page} (example {number})", "exec")
        exec(code, {"__name__": f"docs_methods_example_{number}"})
