"""``rxf finetune`` under 2 gloo processes on CPU (torchrun, as accelerate launch would)
gives the same runs as one process for a model without dropout."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.runner.conftest import write_config

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(config: Path, processes: int) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}",
        "OMP_NUM_THREADS": "1",
    }
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={processes}",
        f"--master_port={_free_port()}",
        "-m",
        "rxf_runner",
    ]
    cmd = launcher if processes > 1 else [sys.executable, "-m", "rxf_runner"]
    out = subprocess.run(
        [*cmd, "finetune", str(config), "--no-progress", "--no-plots", "--restart"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=config.parent,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"accelerate: {processes} process(es) on cpu" in out.stdout  # one process group
    assert out.stdout.count("data: ") == 1  # only the main process prints
    return json.loads((config.parent / "out" / "results.json").read_text())


def test_two_gloo_processes_equal_one(tiny_bert: Path, tiny_csv: Path, tmp_path: Path) -> None:
    model = tmp_path / "bert"
    shutil.copytree(tiny_bert, model)
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    path = write_config(
        tmp_path,
        """
model: {name: bert, max_length: 16}
data: {dataset: reviews.csv, classes: [pos, neg], train_per_class: 6, eval_per_class: 4}
train: {epochs: 2, batch_size: 4, lr: 0.001, eval_every: 1, threads: 1}
methods: [standard, rdrop]
seeds: 1
output: out
""",
    )
    one = {(r["method"], r["seed"]): r for r in _run(path, 1)["runs"]}
    two = {(r["method"], r["seed"]): r for r in _run(path, 2)["runs"]}
    assert one.keys() == two.keys()
    for key, run in one.items():
        assert two[key]["losses"] == pytest.approx(run["losses"], rel=1e-5), key
        assert two[key]["lrs"] == run["lrs"]
        assert [p["accuracy"] for p in two[key]["curve"]] == [p["accuracy"] for p in run["curve"]]
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_bf16_mixed_precision_on_cpu(tiny_bert: Path, tiny_csv: Path, tmp_path: Path) -> None:
    """accelerate's bf16 autocast through the loop and the wrapper (a fresh process: accelerate
    fixes the precision once per process)."""
    shutil.copytree(tiny_bert, tmp_path / "bert")
    path = write_config(
        tmp_path,
        """
model: {name: bert, max_length: 16}
data: {dataset: reviews.csv, classes: [pos, neg], train_per_class: 4, eval_per_class: 2}
train: {epochs: 1, batch_size: 4, mixed_precision: bf16, threads: 1}
methods: [standard, r3f]
seeds: 1
output: out
""",
    )
    runs = _run(path, 1)["runs"]
    assert [r["method"] for r in runs] == ["standard", "r3f"]
    assert all(math.isfinite(x) for r in runs for x in r["losses"])
    assert runs[1]["consistency"][-1] > 0
