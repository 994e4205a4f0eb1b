"""The benchmark script runs, and its memory tracker counts what a hand count says."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "step_time.py"


@pytest.fixture(scope="module")
def step_time():
    spec = importlib.util.spec_from_file_location("step_time", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["step_time"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("step_time", None)


def test_peak_tracker_counts_live_storage(step_time) -> None:
    x = torch.randn(256, 256, requires_grad=True)  # exists before: not counted
    mib = 256 * 256 * 4 / 2**20

    def step() -> None:
        x.grad = None
        hidden = (x @ x).relu()  # mm output (freed after relu) + relu output (kept)
        (hidden @ hidden).sum().backward()

    # by hand, in 256x256 blocks: the forward keeps `hidden` (the mm result dies after relu,
    # the second product after sum); backward of hidden @ hidden makes one gradient per
    # operand and adds them: hidden + 2 gradients + their sum = 4 blocks at the peak
    peak = step_time.peak_memory(step)
    assert peak == pytest.approx(4 * mib, abs=1e-3)
    before = torch.zeros(256, 256)

    def in_place() -> None:
        before.add_(1.0)  # writes into existing memory: nothing new

    assert step_time.peak_memory(in_place) == 0.0


def test_benchmark_runs_end_to_end(step_time, capsys: pytest.CaptureFixture[str]) -> None:
    step_time.main(["--sizes", "tiny", "--reps", "2", "--batch", "2", "--seq", "8"])
    out = capsys.readouterr().out
    for name in (
        "| plain |",
        "| hand-written R3F |",
        "| rxf R3F two-pass |",
        "| rxf R3F concat |",
        "| rxf noise-only (λ=0) |",
        "| transformers NEFTune |",
    ):
        assert name in out, name
    # SMART needs the optional `bench` extra (smart-pytorch); without it the row is absent
    has_smart = importlib.util.find_spec("smart_pytorch") is not None
    assert ("| SMART (smart-pytorch) |" in out) == has_smart
    assert "import rxf:" in out
