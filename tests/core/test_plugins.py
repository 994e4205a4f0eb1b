"""Plugin discovery: ad-hoc plugins, entry points of an installed package, the off switch."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import rxf
from rxf import plugins
from rxf.errors import RXFError

from .conftest import TinyClassifier


@pytest.fixture
def fresh_manager():
    plugins.reset_plugin_manager()
    yield rxf.plugin_manager()
    plugins.reset_plugin_manager()


def test_adhoc_plugin_beats_defaults_and_adds_a_noise(fresh_manager, batch) -> None:
    class PositionsPlugin:
        @rxf.hookimpl
        def rxf_find_embedding(self, model):  # fewer arguments than the spec is fine
            return getattr(model, "embed_positions", None)

        @rxf.hookimpl
        def rxf_register_noise_types(self):
            return {"constant": lambda e, eps, mask=None: torch.full(e.shape, eps)}

    fresh_manager.register(PositionsPlugin(), name="positions")
    model = rxf.wrap(TinyClassifier(), eps=0.5, noise_type="constant")
    assert model.rxf_targets.embedding_name == "embed_positions"
    assert rxf.explain(model).embedding_plugin == "positions"
    seen: list[torch.Tensor] = []
    model.module.layer_norm.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    model(**batch)
    assert torch.allclose(seen[1] - seen[0], torch.full_like(seen[0], 0.5), atol=1e-6)


def test_pluggy_hook_wrappers_are_honoured(fresh_manager, batch) -> None:
    class Wrapping:
        @rxf.hookimpl(wrapper=True)
        def rxf_find_embedding(self, model):
            found = yield  # what the other plugins answered
            return getattr(model, "embed_positions", found)

        @rxf.hookimpl(wrapper=True)
        def rxf_register_noise_types(self):
            offered = yield
            return [*offered, {"test_half": lambda e, eps: torch.full(e.shape, eps / 2)}]

    fresh_manager.register(Wrapping(), name="wrapping")
    model = rxf.wrap(TinyClassifier(), eps=0.5, noise_type="test_half")
    assert model.rxf_targets.embedding_name == "embed_positions"
    assert rxf.explain(model).embedding_plugin == "wrapper wrapping"
    seen: list[torch.Tensor] = []
    model.module.layer_norm.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    model(**batch)
    assert torch.allclose(seen[1] - seen[0], torch.full_like(seen[0], 0.25), atol=1e-6)
    assert "test_half" in plugins.noise_types()


def test_duplicate_registration_names_both_plugins(fresh_manager) -> None:
    class Clash:
        @rxf.hookimpl
        def rxf_register_divergences(self):
            return {"symmetric_kl": lambda clean, noisy: (clean - noisy).sum(-1)}

    fresh_manager.register(Clash(), name="clash")
    with pytest.raises(RXFError, match=r"'symmetric_kl' is registered twice.*'clash'"):
        plugins.divergences()


PLUGIN_PACKAGE = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "rxf-thirdparty-example"
        version = "0.0.1"
        [project.entry-points.rxf]
        thirdparty = "rxf_thirdparty_example"
        [tool.setuptools]
        py-modules = ["rxf_thirdparty_example"]
    """,
    "rxf_thirdparty_example.py": """
        import torch
        from rxf import hookimpl

        @hookimpl
        def rxf_find_embedding(model):
            return getattr(model, "tok", None)

        @hookimpl
        def rxf_register_noise_types():
            return {"twice_eps": lambda e, eps, mask=None: torch.full(e.shape, 2 * eps)}
    """,
}

PROBE = """
import json, sys, torch, rxf
loaded_at_import = "rxf_thirdparty_example" in sys.modules
frameworks = sorted(
    m for m in sys.modules if m.split(".")[0] in {"transformers", "timm", "fairseq"}
)
class Net(torch.nn.Module):  # two embeddings: the defaults alone cannot choose
    def __init__(self):
        super().__init__()
        self.tok, self.other = torch.nn.Embedding(5, 4), torch.nn.Embedding(5, 4)

    def forward(self, ids):
        return self.tok(ids)

net = Net()
result = {"loaded_at_import": loaded_at_import, "frameworks": frameworks}
try:
    model = rxf.wrap(net, eps=0.25, noise_type="twice_eps", r3f_lambda=0.0)
    emb = net.tok(torch.tensor([[1, 2]]))
    out = model(torch.tensor([[1, 2]]))
    result.update(embedding=model.rxf_targets.embedding_name,
                  source=rxf.explain(model).embedding_plugin,
                  shift=(out - emb).flatten().tolist())
except Exception as exc:
    result["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name, text in PLUGIN_PACKAGE.items():
        (src / name).write_text(textwrap.dedent(text))
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
    )
    return target


def run_probe(site: Path, **env: str) -> dict:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path]), **env}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_entry_point_plugin_is_discovered_lazily(installed_plugin: Path) -> None:
    result = run_probe(installed_plugin)
    assert result["loaded_at_import"] is False
    assert result["frameworks"] == []
    assert result["embedding"] == "tok" and result["source"] == "thirdparty"
    assert result["shift"] == pytest.approx([0.5] * 8, abs=1e-6)


@pytest.mark.parametrize("blocked", ["thirdparty", "*", "transformers,thirdparty"])
def test_disable_switch_blocks_entry_points(installed_plugin: Path, blocked: str) -> None:
    result = run_probe(installed_plugin, RXF_DISABLE_PLUGINS=blocked)
    assert "unknown noise_type 'twice_eps'" in result["error"]


def test_import_rxf_imports_no_framework_and_no_torch() -> None:
    code = (
        "import sys, rxf; print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in {'torch', 'transformers', 'timm', 'fairseq', 'pydantic'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api_snapshot() -> None:
    # sorted as ruff's RUF022 sorts (isort style: CONSTANTS, then Classes, then functions)
    assert rxf.__all__ == sorted(rxf.__all__, key=lambda n: (not n.isupper(), n))
    assert set(rxf.__all__) == {
        "IGNORE_INDEX",
        "Explanation",
        "ForwardInputs",
        "RXFConfig",
        "RXFError",
        "RXFModel",
        "RXFPrecisionWarning",
        "RXFUnusedTermWarning",
        "RXFZeroTermWarning",
        "__version__",
        "diagnose",
        "explain",
        "first_submodule",
        "hookimpl",
        "plugin_manager",
        "unwrap",
        "wrap",
    }
    for info in pkgutil.walk_packages(rxf.__path__, "rxf."):  # no submodule shadows a name
        if not info.name.startswith("rxf.cli"):
            importlib.import_module(info.name)
    for name in rxf.__all__:
        assert not isinstance(getattr(rxf, name), types.ModuleType), name
    assert isinstance(rxf.wrap(TinyClassifier()), nn.Module)
