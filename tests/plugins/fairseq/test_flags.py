"""The reference's command-line flags read into an RXFConfig (``rxf_fairseq.config_from_args``)."""

from __future__ import annotations

import argparse

import pytest
import rxf_fairseq

import rxf
from rxf import RXFConfig

from .models import RobertaModel


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
    cfg = rxf_fairseq.config_from_args(argv)
    assert cfg == RXFConfig(eps=1e-6, r3f_lambda=0.7, noise_type="normal", spectral_norm_head=True)
    assert rxf_fairseq.config_from_args([]) == RXFConfig()
    with pytest.raises(ValueError, match="could not read rxf flags"):
        rxf_fairseq.config_from_args(["--eps", "tiny"])
    unknown = rxf_fairseq.config_from_args(["--noise-type", "poisson"])
    with pytest.raises(rxf.RXFError, match="unknown noise_type 'poisson'"):
        rxf.wrap(RobertaModel(), unknown)


def test_from_fairseq_namespace() -> None:
    ns = argparse.Namespace(
        eps=1e-4,
        r3f_lambda=2.0,
        noise_type="uniform",
        spectral_norm_classification_head=False,
        lr=[1e-5],
    )
    assert rxf_fairseq.config_from_args(ns) == RXFConfig(eps=1e-4, r3f_lambda=2.0)
