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
    torch.set_num_threads(1)
    step_time.main(["--sizes", "tiny", "--reps", "2", "--batch", "2", "--seq", "8"])
    out = capsys.readouterr().out
    for name in (
        "| plain |",
        "| hand-written R3F |",
        "| rxf R3F two-pass |",
        "| rxf R3F concat |",
        "| rxf noise-only (λ=0) |",
        "| transformers NEFTune |",
        "| rxf R-Drop |",
        "| rxf SMART K=1 |",
        "| rxf SMART K=2 |",
        "| rxf R-Drop × rxf R3F two-pass |",
    ):
        assert name in out, name
    # SMART needs the optional `bench` extra (smart-pytorch); without it the rows are absent
    has_smart = importlib.util.find_spec("smart_pytorch") is not None
    for name in (
        "| SMART (smart-pytorch) K=1 |",
        "| SMART (smart-pytorch) K=2 |",
        "| SMART (smart-pytorch README) K=1 |",
        "| rxf SMART K=1 × SMART (smart-pytorch) K=1 |",
        "| rxf SMART K=1 × SMART (smart-pytorch README) K=1 |",
    ):
        assert (name in out) == has_smart, name
    assert "import rxf:" in out


def test_new_rows_train_the_model_with_their_method(step_time) -> None:
    """The R-Drop and SMART rows are real steps of their methods: each moves the
    parameters and runs its method's forwards per step (R-Drop 2, SMART 2 + K for rxf and
    smart-pytorch alike)."""
    torch.set_num_threads(1)
    model = step_time.build_model("tiny", torch.device("cpu"))
    batch = step_time.make_batch(2, 8, torch.device("cpu"))
    steps = step_time.variants(model, batch)
    passes = {"rxf R-Drop": 2, "rxf SMART K=1": 3, "rxf SMART K=2": 4}
    if importlib.util.find_spec("smart_pytorch") is not None:
        passes |= {"SMART (smart-pytorch) K=1": 3, "SMART (smart-pytorch) K=2": 4}
        passes["SMART (smart-pytorch README) K=1"] = 3
    weight = model.get_input_embeddings().weight
    calls: list[int] = []
    handle = model.bert.encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        for name, expected in passes.items():
            before = weight.detach().clone()
            calls.clear()
            with step_time._quiet():
                steps[name]()
            assert len(calls) == expected, name
            assert not torch.equal(before, weight.detach()), name  # the SGD step moved it
    finally:
        handle.remove()
