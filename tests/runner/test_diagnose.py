"""``rxf diagnose`` end to end: the command hands rxf.diagnose the model and batches that
``rxf finetune`` would train on, prints the table and writes JSON, Markdown and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rxf_runner import main, models
from rxf_runner.config import FinetuneConfig
from rxf_runner.diagnose import batches_of
from rxf_runner.loading import load_config

import rxf
from tests.runner.conftest import write_config


def test_diagnose_command_matches_the_library_on_the_first_batches(
    tiny_bert: Path, tiny_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path,
        f"""
model: {{name: {tiny_bert}, max_length: 16}}
data: {{dataset: {tiny_csv.name}, classes: [pos, neg], train_per_class: 6, eval_per_class: 4}}
train: {{batch_size: 4}}
seeds: [3]
rxf: {{eps: 0.001, r3f_lambda: 0.5}}
diagnose: {{batches: 2, draws: 1, eps_grid: [0.01, 0.1]}}
output: out
""",
    )
    assert main(["diagnose", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "2 training batch(es) of 4" in printed and "| 1e-03 * |" in printed
    out = tmp_path / "out"
    saved = json.loads((out / "diagnosis.json").read_text())
    assert [r["eps"] for r in saved["rows"]] == [0.001, 0.01, 0.1]
    assert (out / "diagnosis.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "# rxf diagnose" in (out / "diagnosis.md").read_text()

    # the same model (head from seed 3) and batches (seed 3's order), given to the library
    cfg = load_config(config, FinetuneConfig)
    torch.manual_seed(3)
    task = models.build(cfg.model, 2)
    inputs, labels = batches_of(cfg, task)
    assert [len(y) for y in labels] == [4, 4]
    direct = rxf.diagnose(
        task.module, inputs, labels, eps=0.001, r3f_lambda=0.5, eps_grid=[0.01, 0.1]
    )
    assert saved["dropout_only"] == pytest.approx(direct.dropout_only)
    assert [r["both"] for r in saved["rows"]] == pytest.approx([r.both for r in direct.rows])
    assert saved["task_loss"] == pytest.approx(direct.task_loss)


def test_diagnose_settings_are_validated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "diagnose: {eps_grid: [0.1, 0], batchez: 2}\n")
    assert main(["diagnose", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'diagnose.batchez'; did you mean 'batches'?" in err
    assert "diagnose.eps_grid: every eps must be positive, got [0.1, 0.0]" in err


def test_diagnose_command_on_an_image_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A timm ConvNet (BatchNorm) on scikit-learn's digits: the stem gets the noise."""
    pytest.importorskip("timm")
    config = write_config(
        tmp_path,
        """
model: {name: "timm:resnet10t", image_size: 16}
data: {dataset: digits, classes: ["0", "1"], train_per_class: 4, eval_per_class: 4}
train: {batch_size: 4}
diagnose: {draws: 1, eps_grid: [0.001, 0.1]}
output: out
""",
    )
    assert main(["diagnose", str(config), "--no-plots"]) == 0
    saved = json.loads((tmp_path / "out" / "diagnosis.json").read_text())
    assert saved["embedding"] == "conv1.0" and saved["task_loss"] > 0
    assert [r["eps"] for r in saved["rows"]] == [0.001, 0.1]  # the default eps is 0.1
    assert 0 < saved["rows"][0]["noise_only"] < saved["rows"][1]["noise_only"]
    assert "| 1e-01 * |" in capsys.readouterr().out
