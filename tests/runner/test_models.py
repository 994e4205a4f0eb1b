"""Models of the CLI: explain, encoder transfer, the image pipeline, timm on digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rxf_runner import main
from rxf_runner.config import ModelSettings
from rxf_runner.models import build, images_to_tensor, transfer_encoder
from torch import nn

from tests.runner.conftest import write_config


def test_explain_a_local_checkpoint(tiny_bert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(tiny_bert), "--r4f", "--num-labels", "3"]) == 0
    out = capsys.readouterr().out
    assert "bert.embeddings.word_embeddings (Embedding" in out
    assert "head (R4F)         classifier" in out
    assert main(["explain", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_transfer_encoder_copies_all_but_the_head(tiny_bert: Path) -> None:
    torch.manual_seed(0)
    source = build(ModelSettings(name=str(tiny_bert)), num_labels=2).module
    target = build(ModelSettings(name=str(tiny_bert)), num_labels=3).module
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    head = {k: v.clone() for k, v in target.classifier.state_dict().items()}
    transfer_encoder(source, target)
    for (name, a), (_, b) in zip(
        source.bert.state_dict().items(), target.bert.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    for k, v in target.classifier.state_dict().items():
        assert torch.equal(v, head[k])


def test_transfer_encoder_for_models_with_get_classifier() -> None:
    class Net(nn.Module):
        def __init__(self, classes: int) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, classes)

        def get_classifier(self) -> nn.Module:
            return self.fc

    source, target = Net(2), Net(2)
    fc = target.fc.weight.clone()
    transfer_encoder(source, target)
    assert torch.equal(source.stem.weight, target.stem.weight)
    assert torch.equal(target.fc.weight, fc) and not torch.equal(source.fc.weight, fc)


def test_images_are_scaled_resized_and_normalized(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "red.png"
    Image.fromarray(np.full((4, 6, 3), (255, 0, 51), np.uint8)).save(path)
    grey = np.full((8, 8), 0.25)  # float in [0, 1], one channel (like digits)
    batch = images_to_tensor(
        [path, grey], size=5, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0)
    )
    assert batch.shape == (2, 3, 5, 5)
    expected = torch.tensor(
        [
            [(1 - 0.5) / 0.25, (0 - 0.5) / 0.5, (0.2 - 0.5) / 1.0],
            [(0.25 - 0.5) / 0.25, (0.25 - 0.5) / 0.5, (0.25 - 0.5) / 1.0],
        ]
    )
    torch.testing.assert_close(batch.mean(dim=(2, 3)), expected)
    torch.testing.assert_close(batch.std(dim=(2, 3)), torch.zeros(2, 3), atol=1e-5, rtol=0)


def test_finetune_a_timm_model_on_digits(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    config = write_config(
        tmp_path,
        f"""
model: {{name: "timm:resnet10t", image_size: 16}}
data: {{dataset: digits, classes: ["0", "1"], train_per_class: 4, eval_per_class: 4}}
train: {{epochs: 1, batch_size: 4, eval_batch_size: 8}}
methods: [standard, r4f]
seeds: 1
rxf: {{embedding: conv1, eps: 0.01}}
output: {tmp_path / "out"}
""",
    )
    assert main(["finetune", str(config), "--no-progress", "--no-plots"]) == 0
    runs = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    assert [r["method"] for r in runs] == ["standard", "r4f"]
    assert all(r["steps"] == 2 and r["consistency"][0] > 0 for r in runs[1:])


def test_efficientnet_lite0_from_its_wheel() -> None:
    pytest.importorskip("rxf_timm.weights")
    task = build(ModelSettings(name="efficientnet_lite0", image_size=32), num_labels=4)
    batch = task.encode([np.random.default_rng(0).random((8, 8))] * 2)
    assert batch["x"].shape == (2, 3, 32, 32)
    task.module.eval()
    assert task.module(**batch).shape == (2, 4)
    assert task.features(task.module, batch).shape == (2, 1280)


def test_the_command_starts_without_importing_frameworks() -> None:
    import subprocess
    import sys

    code = (
        "import sys, rxf_runner; from rxf_runner import _parser; _parser().format_help(); "
        "print(sorted(m for m in ('torch', 'transformers', 'timm', 'matplotlib') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "[]"


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "finetune" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("rxf ")
    assert main([]) == 0 and "COMMAND" in capsys.readouterr().out
