"""The house: adapters use only rxf's public face, and rxf's modules import without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import rxf

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = [p for p in (ROOT / "plugins").iterdir() if p.is_dir() and p.name.startswith("rxf_")]
# documented modules: the functional APIs and the typed facade over the plugin hooks
PUBLIC_MODULES = {"rxf.noise", "rxf.divergence", "rxf.spectral", "rxf.plugins"}


def _imports(path: Path, skip_type_checking: bool = True) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text())
    hidden: set[int] = set()
    if skip_type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                hidden |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def test_adapters_import_only_the_public_face_of_rxf() -> None:
    assert len(ADAPTERS) >= 4
    for package in ADAPTERS:
        for path in sorted(package.rglob("*.py")):
            for module, names in _imports(path, skip_type_checking=False):
                if module == "rxf":
                    submodules = {m.split(".")[1] for m in PUBLIC_MODULES}
                    assert set(names) <= set(rxf.__all__) | submodules, (str(path), names)
                elif module.startswith("rxf."):
                    assert module in PUBLIC_MODULES, (str(path), module)


def test_rxf_modules_import_without_cycles() -> None:
    modules = {
        "rxf." + p.stem: p for p in (ROOT / "rxf").glob("*.py") if p.stem != "__init__"
    }
    graph = {
        name: {m for m, _ in _imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }
    for name, path in modules.items():  # `from rxf import plugins` style
        for module, names in _imports(path):
            if module == "rxf":
                graph[name] |= {f"rxf.{n}" for n in names if f"rxf.{n}" in modules}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 2:
            return
        assert state.get(node) != 1, " -> ".join([*trail, node])
        state[node] = 1
        for nxt in sorted(graph[node]):
            visit(nxt, [*trail, node])
        state[node] = 2

    for name in sorted(graph):
        visit(name, [])
