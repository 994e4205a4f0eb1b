"""The recipes of docs/stacks.md, run by the stack tests (not a test module).

A recipe is the first ``python`` code block after ``<!-- recipe: NAME -->``; it runs with
the names the page says it uses (``model``, ``batch``, ``output_dir``, ...) bound to tiny
objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PAGE = Path(__file__).resolve().parents[2] / "docs" / "stacks.md"


def recipe(name: str) -> str:
    text = PAGE.read_text()
    marker = f"<!-- recipe: {name} -->"
    assert marker in text, f"docs/stacks.md has no recipe {name!r}"
    after = text.split(marker, 1)[1]
    assert after.lstrip().startswith("```python"), f"recipe {name!r}: no code block follows"
    return after.split("```python", 1)[1].split("```", 1)[0]


def run_recipe(name: str, **names: Any) -> dict[str, Any]:
    """Executes the recipe with ``names`` bound; returns its namespace."""
    namespace: dict[str, Any] = {"__name__": f"recipe_{name}", **names}
    exec(compile(recipe(name), f"docs/stacks.md ({name})", "exec"), namespace)
    return namespace
