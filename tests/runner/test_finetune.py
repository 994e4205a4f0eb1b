"""``rxf finetune`` end to end on a tiny BERT and a tiny CSV: outputs, numbers, resume."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from rxf_runner import main, train

from tests.runner.conftest import write_config

QUICK = ["--no-progress", "--no-plots"]


def tiny_config(
    tmp_path: Path,
    model: Path,
    csv: Path,
    extra: str = "",
    methods: str = "[standard, r3f, r4f]",
    seeds: int = 2,
    epochs: int = 3,
) -> Path:
    return write_config(
        tmp_path,
        f"""
model: {{name: {model}, max_length: 16}}
data: {{dataset: {csv.name}, classes: [pos, neg], train_per_class: 6, eval_per_class: 4}}
train: {{epochs: {epochs}, batch_size: 4, lr: 0.001, eval_every: 1, eval_batch_size: 8}}
methods: {methods}
seeds: {seeds}
rxf: {{eps: 0.1}}
output: {tmp_path / "out"}
{extra}""",
    )


def run_files(out: Path) -> dict[str, Path]:
    """The finished runs in ``out`` (every fingerprint's folder), by file name."""
    return {p.name: p for p in (out / "runs").glob("*/*-seed*.json")}


def counting_fit(
    monkeypatch: pytest.MonkeyPatch, stop_at: int | None = None, fake: bool = False
) -> list[Any]:
    """Replace train.fit by a wrapper that records (method, seed) and can raise Ctrl-C;
    ``fake`` skips the training and returns a fixed result."""
    calls: list[Any] = []
    real = train.fit

    def fit(*args: Any, **kwargs: Any) -> Any:
        calls.append((kwargs["method"], kwargs["seed"]))
        if stop_at is not None and len(calls) == stop_at:
            raise KeyboardInterrupt
        if fake:
            return train.RunResult(
                kwargs["method"],
                kwargs["seed"],
                0.5,
                0.5,
                1,
                0.1,
                0.1,
                0.1,
                [{"epoch": 1, "step": 1, "accuracy": 0.5, "macro_f1": 0.5}],
            )
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "fit", fit)
    return calls


def test_end_to_end_writes_table_json_and_plots(
    tiny_bert: Path, tiny_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config(tmp_path, tiny_bert, tiny_csv)
    assert main(["finetune", str(config), "--no-progress"]) == 0
    out = tmp_path / "out"
    printed = capsys.readouterr().out
    assert "bert.embeddings.word_embeddings" in printed  # rxf.explain shown before training
    assert "| r4f | 2 |" in printed

    result = json.loads((out / "results.json").read_text())
    assert result["complete"] is True
    runs = result["runs"]
    assert sorted((r["method"], r["seed"]) for r in runs) == sorted(
        (m, s) for m in ("standard", "r3f", "r4f") for s in (0, 1)
    )
    for run in runs:
        assert run["steps"] == 3 * 3  # 12 examples / batch 4, 3 epochs
        assert len(run["losses"]) == run["steps"] and len(run["curve"]) == 3
        assert run["accuracy"] == run["curve"][-1]["accuracy"]
        assert 0 <= run["accuracy"] <= 1 and run["seconds_per_step"] > 0
        # the consistency term is zero without rxf and positive with it (noise arrived)
        if run["method"] == "standard":
            assert set(run["consistency"]) == {0.0}
        else:
            assert all(c > 0 for c in run["consistency"])
    for row in result["summary"]:
        accs = [r["accuracy"] for r in runs if r["method"] == row["method"]]
        assert row["accuracy_mean"] == pytest.approx(statistics.mean(accs))
        assert row["accuracy_sd"] == pytest.approx(statistics.stdev(accs))
        assert row["accuracy_worst"] == min(accs)
    for paired in result["paired"]:
        acc = {(r["method"], r["seed"]): r["accuracy"] for r in runs}
        diffs = [acc[(paired["method"], s)] - acc[("standard", s)] for s in (0, 1)]
        assert paired["differences"] == pytest.approx(diffs)
    assert [p["method"] for p in result["paired"]] == ["r3f", "r4f"]
    table = (out / "results.md").read_text()
    assert table.count("\n| ") == 4 + 3 and "Partial" not in table  # 3 methods, 2 paired
    verdict = result["paired"][0]["verdict"]
    assert any(
        line.startswith("| r3f | 2 | ") and line.endswith(f"| {verdict} |")
        for line in table.splitlines()
    )
    for png in ("learning_curves.png", "paired_differences.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_result_and_r4f_differs(
    tiny_bert: Path, tiny_csv: Path, tmp_path: Path
) -> None:
    """A run is a function of (config, method, seed): rerunning from scratch reproduces it."""
    config = tiny_config(tmp_path, tiny_bert, tiny_csv, methods="[r3f, r4f]", seeds=1)
    assert main(["finetune", str(config), *QUICK]) == 0
    first = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    assert main(["finetune", str(config), *QUICK, "--restart"]) == 0
    again = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    assert [r["losses"] for r in first] == [r["losses"] for r in again]
    assert first[0]["losses"] != first[1]["losses"]  # spectral norm changes the training


def test_interrupt_keeps_finished_runs_and_rerun_skips_them(
    tiny_bert: Path,
    tiny_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tiny_config(tmp_path, tiny_bert, tiny_csv)
    calls = counting_fit(monkeypatch, stop_at=2)
    assert main(["finetune", str(config), *QUICK]) == 130
    assert calls == [("standard", 0), ("r3f", 0)]
    assert sorted(run_files(tmp_path / "out")) == ["standard-seed0.json"]
    kept = run_files(tmp_path / "out")["standard-seed0.json"].read_bytes()
    assert "Partial" in (tmp_path / "out" / "results.md").read_text()
    assert "interrupted: 1 of 6 runs are saved" in capsys.readouterr().out

    calls = counting_fit(monkeypatch)
    assert main(["finetune", str(config), *QUICK]) == 0
    assert ("standard", 0) not in calls and len(calls) == 5
    assert run_files(tmp_path / "out")["standard-seed0.json"].read_bytes() == kept
    assert "standard seed 0: done before" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "out" / "results.json").read_text())["runs"]) == 6


def test_more_seeds_reuse_finished_runs_other_settings_rerun(
    tiny_bert: Path,
    tiny_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tiny_config(tmp_path, tiny_bert, tiny_csv, methods="[standard]", seeds=1, epochs=1)
    assert main(["finetune", str(config), *QUICK]) == 0
    calls = counting_fit(monkeypatch)
    config = tiny_config(tmp_path, tiny_bert, tiny_csv, methods="[standard]", seeds=2, epochs=1)
    assert main(["finetune", str(config), *QUICK]) == 0
    assert calls == [("standard", 1)]

    changed = tiny_config(tmp_path, tiny_bert, tiny_csv, methods="[standard]", seeds=2, epochs=2)
    capsys.readouterr()
    assert main(["finetune", str(changed), *QUICK]) == 0
    out = capsys.readouterr().out
    assert "note: 2 run(s) in" in out and "(changed: train.epochs); they are kept" in out
    assert calls[1:] == [("standard", 0), ("standard", 1)]
    assert main(["finetune", str(config), *QUICK]) == 0  # back: the first runs are reused
    assert len(calls) == 3
    assert main(["finetune", str(changed), *QUICK, "--restart"]) == 0
    assert calls[3:] == [("standard", 0), ("standard", 1)]


def test_edited_data_reruns(
    tiny_bert: Path,
    tiny_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Same config, edited data file: the finished runs are not reused."""
    config = tiny_config(tmp_path, tiny_bert, tiny_csv, methods="[standard]", seeds=1, epochs=1)
    calls = counting_fit(monkeypatch, fake=True)
    assert main(["finetune", str(config), *QUICK]) == 0
    assert main(["finetune", str(config), *QUICK]) == 0
    assert calls == [("standard", 0)]
    tiny_csv.write_text(tiny_csv.read_text().replace("good", "fine"))
    capsys.readouterr()
    assert main(["finetune", str(config), *QUICK]) == 0
    assert calls == [("standard", 0), ("standard", 0)]
    assert "(changed: content.data.dataset)" in capsys.readouterr().out


def test_ctrl_c_on_the_real_command(
    tiny_bert: Path, tiny_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT to a running ``rxf finetune`` after its first finished seed; the rerun skips it."""
    config = tiny_config(tmp_path, tiny_bert, tiny_csv, methods="[standard]", seeds=6, epochs=20)
    runs = tmp_path / "out" / "runs"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            str(Path(__file__).resolve().parents[2] / sub) for sub in ("", "plugins")
        ),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "rxf_runner", "finetune", str(config), *QUICK],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not run_files(runs.parent) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    finished = sorted(run_files(runs.parent))
    assert "standard-seed0.json" in finished and len(finished) < 6, out
    assert "interrupted" in out

    calls = counting_fit(monkeypatch, fake=True)
    assert main(["finetune", str(config), *QUICK]) == 0
    done_before = {int(name.split("seed")[1].split(".")[0]) for name in finished}
    assert {seed for _, seed in calls} == set(range(6)) - done_before


def _raw_weight(linear: Any) -> Any:
    """The Linear's own weight (R4F's parametrization keeps it as ``original``)."""
    parametrizations = getattr(linear, "parametrizations", None)
    return parametrizations.weight.original if parametrizations is not None else linear.weight


def test_paired_design_same_seed_same_head_subset_and_order(
    tiny_bert: Path, tiny_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every method's run with a seed starts from the same head and sees the same training
    examples in the same order; another seed changes the head and the order."""
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    real = train.fit

    def spy(task: Any, module: Any, train_set: Any, *args: Any, **kwargs: Any) -> Any:
        inner = getattr(module, "module", module)
        record: dict[str, Any] = {
            "head": _raw_weight(inner.classifier).detach().clone(),
            "subset": list(train_set.items),
            "batches": [],
        }
        encode = task.encode

        def logged(items: Any) -> Any:
            if inner.training:
                record["batches"].append(list(items))
            return encode(items)

        task.encode = logged
        seen[(kwargs["method"], kwargs["seed"])] = record
        return real(task, module, train_set, *args, **kwargs)

    monkeypatch.setattr(train, "fit", spy)
    config = write_config(  # 3 classes: the saved 2-class head is replaced by a new one
        tmp_path,
        f"""
model: {{name: {tiny_bert}, max_length: 16}}
data: {{dataset: {tiny_csv}, train_per_class: 4, eval_per_class: 2}}
train: {{epochs: 2, batch_size: 4, eval_every: 2}}
methods: [standard, r3f, r4f, rdrop, r3f_shared_dropout]
seeds: 2
output: out
""",
    )
    assert main(["finetune", str(config), *QUICK]) == 0
    for seed in (0, 1):
        first = seen[("standard", seed)]
        assert len(first["batches"]) == 2 * 3  # 12 examples / batch 4, 2 epochs
        for method in ("r3f", "r4f", "rdrop"):
            other = seen[(method, seed)]
            assert other["subset"] == first["subset"] and other["batches"] == first["batches"]
            assert torch.equal(other["head"], first["head"]), method
    assert not torch.equal(seen[("standard", 0)]["head"], seen[("standard", 1)]["head"])
    assert seen[("standard", 0)]["batches"] != seen[("standard", 1)]["batches"]
    assert seen[("standard", 0)]["subset"] == seen[("standard", 1)]["subset"]


def test_methods_wrap_with_their_settings(tiny_bert: Path) -> None:
    from rxf_runner.config import ModelSettings

    import rxf

    settings = ModelSettings(name=str(tiny_bert), max_length=16)
    base = rxf.RXFConfig(eps=0.1, r3f_lambda=0.5)
    _, plain = train.prepare(settings, 3, "standard", 0, base)
    assert not isinstance(plain, rxf.RXFModel)
    expected = {
        "r3f": (0.1, False, False),
        "r4f": (0.1, True, False),
        "rdrop": (0.0, False, False),
        "r3f_shared_dropout": (0.1, False, True),
    }
    for method, (eps, spectral, shared) in expected.items():
        _, module = train.prepare(settings, 3, method, 0, base)
        cfg = module.rxf_config
        assert (cfg.eps, cfg.spectral_norm_head, cfg.share_dropout_masks) == (eps, spectral, shared)
        assert cfg.r3f_lambda == 0.5
