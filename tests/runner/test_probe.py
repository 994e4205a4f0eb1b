"""``rxf probe`` on a tiny BERT: the table per method, the chained variant, resume, and the
pooled features the probes read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rxf_runner import main
from rxf_runner.config import DataSettings, ModelSettings
from rxf_runner.data import Examples, split
from rxf_runner.models import build
from rxf_runner.probe import features

from tests.runner.conftest import write_config
from tests.runner.test_finetune import QUICK, counting_fit


def probe_config(tmp_path: Path, model: Path, csv: Path) -> Path:
    def task(name: str, classes: str) -> str:
        return (
            f"{{name: {name}, data: {{dataset: {csv.name}, classes: {classes}, "
            f"train_per_class: 4, eval_per_class: 4}}}}"
        )

    return write_config(
        tmp_path,
        f"""
model: {{name: {model}, max_length: 16}}
train: {{epochs: 2, batch_size: 4, lr: 0.001}}
source: {task("pos-neg", "[pos, neg]")}
second: {task("pos-neu", "[pos, neu]")}
probes: [{task("neg-neu", "[neg, neu]")}, {task("three-way", "[pos, neg, neu]")}]
methods: [standard, r4f]
seeds: 1
output: {tmp_path / "probe"}
""",
    )


def test_probe_table_per_method_with_chained_variant(
    tiny_bert: Path,
    tiny_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = probe_config(tmp_path, tiny_bert, tiny_csv)
    assert main(["probe", str(config), "--no-progress"]) == 0
    table = (tmp_path / "probe" / "probe.md").read_text()
    assert table in capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    assert header == (
        "| method | runs | probe neg-neu | probe three-way | source pos-neg | "
        "chained pos-neu | chained probe pos-neg |"
    )
    rows = {
        line.split(" | ")[0][2:]: line
        for line in table.splitlines()
        if line.startswith("| ") and not line.startswith("| method")
    }
    assert set(rows) == {"pretrained", "standard", "r4f"}
    assert rows["pretrained"].count("—") == 3  # no fine-tuning: no source / chained columns

    result = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert [(r["method"], r["seed"]) for r in result["runs"]] == [
        ("pretrained", None),
        ("standard", 0),
        ("r4f", 0),
    ]
    for run in result["runs"]:
        assert all(0.0 <= v <= 1.0 for v in run["scores"].values())
        assert len(run["scores"]) == (2 if run["method"] == "pretrained" else 5)

    calls = counting_fit(monkeypatch)
    assert main(["probe", str(config), *QUICK[:1]]) == 0
    assert calls == []  # every run was on disk


def test_features_are_the_mean_over_real_tokens(tiny_bert: Path, tiny_csv: Path) -> None:
    torch.manual_seed(0)
    task = build(ModelSettings(name=str(tiny_bert), max_length=16), num_labels=3)
    train, _ = split(DataSettings(dataset=str(tiny_csv), train_per_class=2, eval_per_class=2))
    texts = [*train.items[:3], "good"]  # different lengths: padding in the batch
    batched = features(task, task.module, Examples(texts, [0] * 4, train.label_names), batch_size=4)
    task.module.eval()
    with torch.no_grad():
        for i, text in enumerate(texts):
            ids = task.encode([text])  # alone: no padding at all
            hidden = task.module.bert(**ids).last_hidden_state[0]
            torch.testing.assert_close(
                torch.from_numpy(batched[i]), hidden.mean(0), rtol=1e-4, atol=1e-5
            )
