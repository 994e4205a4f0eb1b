"""The docs keep up with the code: every hook and every config field is documented."""

from __future__ import annotations

import inspect
from pathlib import Path

from rxf import hookspecs
from rxf.config import RXFConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"


def hook_names() -> list[str]:
    return [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("rxf_")]


def test_every_hook_has_a_docstring_and_a_docs_section() -> None:
    text = (DOCS / "plugins.md").read_text()
    names = hook_names()
    assert len(names) >= 7
    for name in names:
        assert getattr(hookspecs, name).__doc__, name
        assert f"### `{name}`" in text, f"docs/plugins.md lacks a section for {name}"


def test_every_config_field_is_in_the_reference() -> None:
    text = (DOCS / "config.md").read_text()
    for name, field in RXFConfig.model_fields.items():
        assert f"| `{name}` |" in text, f"docs/config.md lacks the field {name}"
        assert field.description, f"RXFConfig.{name} has no description"


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
