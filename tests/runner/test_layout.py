"""The runner is an application on the library: it imports only ``rxf``'s public face,
nothing under ``rxf/`` imports it or an adapter, and it stays a minority of the code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rxf

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "plugins" / "rxf_runner"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def test_runner_imports_only_the_public_face_of_rxf() -> None:
    files = sorted(RUNNER.glob("*.py"))
    assert len(files) > 5
    for path in files:
        for module, names in _imports(path):
            if module == "rxf":
                assert set(names) <= set(rxf.__all__), (path.name, names)
            else:
                assert not module.startswith("rxf."), (path.name, module)


def test_nothing_under_rxf_imports_an_adapter_or_the_runner() -> None:
    for path in sorted((ROOT / "rxf").rglob("*.py")):
        for module, _ in _imports(path):
            assert not module.startswith("rxf_"), (path, module)


@pytest.mark.xfail(
    strict=True,
    reason="issue 11 target not met yet: the runner is about 35% of rxf + plugins "
    "(see the measured share in the assertion); strict, so meeting it fails this marker",
)
def test_runner_is_under_30_percent_of_the_non_test_lines() -> None:
    def lines(paths: list[Path]) -> int:
        return sum(len(p.read_text().splitlines()) for p in paths)

    runner = lines(sorted(RUNNER.rglob("*.py")))
    library = lines(sorted((ROOT / "rxf").rglob("*.py")))
    adapters = lines([p for p in (ROOT / "plugins").rglob("*.py") if RUNNER not in p.parents])
    share = runner / (runner + library + adapters)
    assert share < 0.30, f"runner {runner} lines = {share:.0%} of rxf + plugins"
