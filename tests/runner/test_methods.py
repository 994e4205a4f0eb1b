"""``rxf finetune`` methods are the presets of ``RXFConfig.preset``: each maps to its
preset's config with the ``rxf:`` settings it takes, R-Drop's loss averages both passes'
task losses, and a tiny run trains with rdrop, neftune and smart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from rxf_runner import main, train
from rxf_runner.config import FinetuneConfig, ModelSettings, ProbeConfig, method_config
from rxf_runner.data import Examples
from torch import nn

import rxf
from tests.runner.conftest import sentences
from tests.runner.test_finetune import QUICK, tiny_config

ALL = ["standard", "r3f", "r4f", "rdrop", "neftune", "smart", "r3f_shared_dropout"]


def test_every_method_is_its_preset_with_the_rxf_fields_it_takes() -> None:
    cfg = FinetuneConfig.model_validate(
        {
            "methods": ALL,
            "rxf": {"eps": 0.3, "r3f_lambda": 0.7, "noise_type": "normal"},
            "per_method": {"smart": {"smart_steps": 2}, "neftune": {"eps": 10.0}},
        }
    )
    resolved = {m: method_config(m, cfg.rxf, cfg.per_method) for m in cfg.methods}
    preset = rxf.RXFConfig.preset
    assert resolved["standard"] is None
    assert resolved["r3f"] == preset("r3f", eps=0.3, r3f_lambda=0.7, noise_type="normal")
    assert resolved["r4f"] == preset("r4f", eps=0.3, r3f_lambda=0.7, noise_type="normal")
    shared = preset("r3f", eps=0.3, r3f_lambda=0.7, noise_type="normal", share_dropout_masks=True)
    assert resolved["r3f_shared_dropout"] == shared
    # R-Drop: no noise whatever eps says; r3f_lambda is its alpha
    assert resolved["rdrop"] == preset("rdrop", r3f_lambda=0.7)
    assert resolved["rdrop"] is not None and resolved["rdrop"].method == "rdrop"
    # NEFTune: its own alpha (per_method), noise and one pass; rxf's eps/lambda do not apply
    assert resolved["neftune"] == preset("neftune", eps=10.0)
    # SMART: its ball, start and trained embeddings; lambda_s from rxf, K from per_method
    assert resolved["smart"] == preset("smart", r3f_lambda=0.7, smart_steps=2)
    # the defaults: the diagnosed eps=0.1 is R3F's only
    default = FinetuneConfig(methods=ALL)
    assert method_config("r3f", default.rxf, {}) == preset("r3f", eps=0.1)
    for name in ("rdrop", "neftune", "smart"):
        assert method_config(name, default.rxf, {}) == preset(name)
    assert ProbeConfig.model_validate({"methods": ["standard", "smart", "rdrop"]}).methods[1:] == [
        "smart",
        "rdrop",
    ]


def test_printed_config_keeps_every_method(tmp_path: Path) -> None:
    """The whole rxf: section printed by --print-config and read back resolves every
    method as before (no SMART/R-Drop field is taken over from R3F's printed defaults)."""
    import yaml

    cfg = FinetuneConfig(methods=ALL)
    again = FinetuneConfig.model_validate(
        yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json")))
    )
    for m in ALL:
        assert method_config(m, again.rxf, again.per_method) == method_config(m, cfg.rxf, {}), m


def test_rdrop_loss_averages_both_passes(tiny_bert: Path) -> None:
    """The runner's loss for rdrop: ½(CE(pass 1) + CE(pass 2)) + the term, by hand from
    the logits of the two passes the inner model ran."""
    settings = ModelSettings(name=str(tiny_bert), max_length=16)
    task, module = train.prepare(settings, 3, "rdrop", 0, rxf.RXFConfig(eps=0.1))
    assert isinstance(module, rxf.RXFModel) and module.rxf_config.method == "rdrop"
    rows = sentences(2)
    names = ["neg", "neu", "pos"]
    batch = Examples([t for t, _ in rows], [names.index(y) for _, y in rows], names)
    logits: list[torch.Tensor] = []
    handle = module.module.register_forward_hook(lambda m, a, out: logits.append(out.logits))
    module.train()
    acc = train.accelerator_for(train.TrainSettings())
    loss, term = train._loss(task, module, batch, acc)
    handle.remove()
    assert len(logits) == 2 and not torch.equal(logits[0], logits[1])  # two dropout draws
    labels = torch.tensor(batch.labels)
    ce = [nn.functional.cross_entropy(x.float(), labels) for x in logits]
    p, q = logits[0].float().log_softmax(-1), logits[1].float().log_softmax(-1)
    kl_s = ((p.exp() * (p - q)).sum(-1) + (q.exp() * (q - p)).sum(-1)).mean()
    assert float(term) == pytest.approx(float(kl_s) / 4, rel=1e-5)  # (alpha/4)·KL_S
    assert float(loss) == pytest.approx(float((ce[0] + ce[1]) / 2 + kl_s / 4), rel=1e-5)


def test_a_tiny_run_with_rdrop_neftune_and_smart(
    tiny_bert: Path, tiny_csv: Path, tmp_path: Path
) -> None:
    config = tiny_config(
        tmp_path, tiny_bert, tiny_csv, methods="[standard, rdrop, neftune, smart]", seeds=1
    )
    assert main(["finetune", str(config), *QUICK]) == 0
    result: dict[str, Any] = json.loads((tmp_path / "out" / "results.json").read_text())
    runs = {r["method"]: r for r in result["runs"]}
    assert sorted(runs) == ["neftune", "rdrop", "smart", "standard"]
    for method, run in runs.items():
        assert run["steps"] == 9 and 0 <= run["accuracy"] <= 1
        assert all(torch.isfinite(torch.tensor(run["losses"])))
        if method in ("standard", "neftune"):  # neftune: noise only, no term
            assert set(run["consistency"]) == {0.0}, method
        else:
            assert all(c > 0 for c in run["consistency"]), method
    assert result["about"]["method rdrop"] == "method=rdrop, eps=0.0"
    assert "method=smart" in result["about"]["method smart"]


def test_explain_shows_a_preset(tiny_bert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shown = {}
    for method in ("r3f", "rdrop", "smart"):
        assert main(["explain", str(tiny_bert), "--method", method]) == 0
        shown[method] = capsys.readouterr().out
    assert "eps=0.1" not in shown["r3f"] and "eps=1e-05" in shown["r3f"]
    assert len(set(shown.values())) == 3  # each preset's own settings
    assert "normal" in shown["smart"] and "uniform" not in shown["rdrop"]
    with pytest.raises(SystemExit):
        main(["explain", str(tiny_bert), "--method", "freelb"])


def test_per_method_cannot_switch_r4f_off() -> None:
    # spectral_norm_head: false under r4f was accepted: the "r4f" row trained R3F
    with pytest.raises(ValueError, match="chosen by the method"):
        FinetuneConfig.model_validate(
            {"methods": ["standard", "r4f"], "per_method": {"r4f": {"spectral_norm_head": False}}}
        )
