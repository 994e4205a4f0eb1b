"""RXFConfig validation and loading."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from pydantic import ValidationError

import rxf
from rxf import RXFConfig, RXFError

from .conftest import TinyClassifier


def test_defaults_follow_the_reference() -> None:
    cfg = RXFConfig()
    assert (cfg.eps, cfg.r3f_lambda, cfg.noise_type) == (1e-5, 1.0, "uniform")
    assert cfg.divergence == "symmetric_kl" and cfg.spectral_norm_head is False
    assert cfg.detach_noisy_embedding is True and cfg.token_reduction == "mean"


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"eps": -1e-5}, "eps"),
        ({"r3f_lambda": -0.1}, "r3f_lambda"),
        ({"eps": float("nan")}, "eps"),
        ({"epsilon": 1e-5}, "epsilon"),
        ({"eps": "small"}, "eps"),
        ({"spectral_norm_head": "maybe"}, "spectral_norm_head"),
        ({"token_reduction": "sum"}, "token_reduction"),
        ({"embedding": "encoder..embed"}, "dotted module path"),
    ],
)
def test_invalid_fields_name_the_field(fields: dict, needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        RXFConfig(**fields)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"noise_type": "gaussianish"}, "unknown noise_type 'gaussianish'"),
        ({"noise_type": "laplace"}, "known: neftune, normal, uniform"),
        ({"noise_type": "unifrom"}, "Did you mean 'uniform'?"),
        ({"divergence": "wasserstein"}, "unknown divergence 'wasserstein'"),
        ({"regression_divergence": "huber"}, "RXFConfig.regression_divergence"),
    ],
)
def test_registered_names_are_checked_at_wrap(fields: dict, needle: str) -> None:
    cfg = RXFConfig(**fields)  # pure data: nothing is looked up here
    with pytest.raises(RXFError, match=re.escape(needle)):
        rxf.wrap(TinyClassifier(), cfg)
    with pytest.raises(RXFError, match=re.escape(needle)):
        rxf.explain(TinyClassifier(), cfg)


def test_building_a_config_imports_neither_torch_nor_an_adapter() -> None:
    code = (
        "import sys; from rxf import RXFConfig; RXFConfig(); RXFConfig.from_dict({'eps': 0.1, "
        "'noise_type': 'neftune'}); print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'transformers', 'timm', 'rxf_transformers', 'rxf_timm', 'rxf_fairseq'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_frozen() -> None:
    with pytest.raises(ValidationError):
        RXFConfig().eps = 1.0  # type: ignore[misc]


def test_from_json_and_yaml(tmp_path) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"eps": 0.1, "r3f_lambda": 0.7}))
    (tmp_path / "c.yaml").write_text("eps: 0.1\nr3f_lambda: 0.7\nnoise_type: normal\n")
    assert RXFConfig.from_file(tmp_path / "c.json") == RXFConfig(eps=0.1, r3f_lambda=0.7)
    assert RXFConfig.from_file(tmp_path / "c.yaml").noise_type == "normal"
    (tmp_path / "bad.yaml").write_text("eps: 0.1\nlambda: 2\n")
    with pytest.raises(ValidationError, match="lambda"):
        RXFConfig.from_file(tmp_path / "bad.yaml")
    (tmp_path / "c.toml").write_text("")
    with pytest.raises(ValueError, match=r"\.json, \.yaml"):
        RXFConfig.from_file(tmp_path / "c.toml")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        RXFConfig.from_file(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="mapping"):
        RXFConfig.from_file(tmp_path / "list.yaml")
