"""The docs keep up with the code: every hook and every config field is documented."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any

from rxf import hookspecs
from rxf.config import RXFConfig

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
