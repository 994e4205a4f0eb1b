"""RXFConfig validation and loading."""

from __future__ import annotations

import argparse
import json

import pytest
from pydantic import ValidationError

from rxf import RXFConfig


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
        ({"noise_type": "gaussianish"}, "unknown noise_type 'gaussianish'"),
        ({"divergence": "wasserstein"}, "unknown divergence 'wasserstein'"),
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


def test_unknown_noise_lists_known_names() -> None:
    with pytest.raises(ValidationError, match="known: neftune, normal, uniform"):
        RXFConfig(noise_type="laplace")


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


def test_from_fairseq_flags() -> None:
    argv = [
        "data-bin/RTE",
        "--lr",
        "1e-5",
        "--eps",
        "1e-6",
        "--r3f-lambda",
        "0.7",
        "--noise-type",
        "normal",
        "--spectral-norm-classification-head",
    ]
    cfg = RXFConfig.from_fairseq_args(argv)
    assert cfg == RXFConfig(eps=1e-6, r3f_lambda=0.7, noise_type="normal", spectral_norm_head=True)
    assert RXFConfig.from_fairseq_args([]) == RXFConfig()
    with pytest.raises(ValueError, match="could not read rxf flags"):
        RXFConfig.from_fairseq_args(["--eps", "tiny"])
    with pytest.raises(ValidationError, match="noise_type"):
        RXFConfig.from_fairseq_args(["--noise-type", "poisson"])


def test_from_fairseq_namespace() -> None:
    ns = argparse.Namespace(
        eps=1e-4,
        r3f_lambda=2.0,
        noise_type="uniform",
        spectral_norm_classification_head=False,
        lr=[1e-5],
    )
    assert RXFConfig.from_fairseq_args(ns) == RXFConfig(eps=1e-4, r3f_lambda=2.0)
