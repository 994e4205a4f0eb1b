"""torch.compile on a wrapped model; compiling the inner model first is refused."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import rxf
from tests.integration.conftest import grads


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(50, 16)
        self.norm = nn.LayerNorm(16)
        self.classifier = nn.Linear(16, 3)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> dict:
        logits = self.classifier(torch.tanh(self.norm(self.embed_tokens(input_ids))).mean(1))
        return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}


def _steps(model: nn.Module, batch: dict, n: int = 2) -> list[float]:
    losses = []
    for seed in range(n):
        torch.manual_seed(seed)
        out = model(**batch)
        out["loss"].backward()
        losses.append(out["loss"].item())
    return losses


def test_compiled_wrapper_matches_eager() -> None:
    # aot_eager traces the wrapper with dynamo and AOTAutograd like inductor does, without
    # inductor's minutes of code generation on CPU; inductor differs only in its RNG (docs)
    torch.manual_seed(0)
    net, batch = (
        Net(),
        {"input_ids": torch.randint(0, 50, (4, 6)), "labels": torch.tensor([0, 1, 2, 1])},
    )
    eager_net = copy.deepcopy(net)
    expected = _steps(rxf.wrap(eager_net, eps=0.3), batch)
    wrapped = rxf.wrap(net, eps=0.3)
    compiled = torch.compile(wrapped, backend="aot_eager")
    assert _steps(compiled, batch) == pytest.approx(expected, rel=1e-6)
    assert wrapped.last_stats["noise_to_signal"] > 0  # noise arrived in compiled code
    want = grads(eager_net)
    for name, grad in grads(net).items():
        torch.testing.assert_close(grad, want[name], msg=name)


def test_compiled_inner_model_is_refused() -> None:
    with pytest.raises(rxf.RXFError, match=r"torch.compile\(rxf.wrap\(model\)\)"):
        rxf.wrap(torch.compile(Net()))
    net = Net()
    net.compile()
    with pytest.raises(rxf.RXFError, match="compiled model"):
        rxf.wrap(net)


def test_concat_mode_compiles_with_inductor_and_matches_eager(fixed_noise_type: str) -> None:
    # issue 9: this failed in backward under inductor ("expected Tensor() for op: input");
    # a shape-seeded noise makes eager and inductor draw the same noise, so they must agree
    torch.manual_seed(0)
    net, batch = (
        Net(),
        {"input_ids": torch.randint(0, 50, (4, 6)), "labels": torch.tensor([0, 1, 2, 1])},
    )
    eager_net = copy.deepcopy(net)
    settings = {"eps": 0.3, "mode": "concat", "noise_type": fixed_noise_type}
    expected = _steps(rxf.wrap(eager_net, **settings), batch)
    wrapped = rxf.wrap(net, **settings)
    assert _steps(torch.compile(wrapped), batch) == pytest.approx(expected, rel=1e-5)
    assert wrapped.last_stats["divergence"] > 0
    want = grads(eager_net)
    for name, grad in grads(net).items():
        torch.testing.assert_close(grad, want[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("preset", ["rdrop", "smart"])
def test_rdrop_and_smart_compile_and_match_eager(preset: str) -> None:
    # SMART's ascent (torch.autograd.grad w.r.t. the perturbation) runs between graphs;
    # dropout off, so eager and compiled draw nothing but the start (same seed, same draw)
    torch.manual_seed(0)
    net, batch = (
        Net(),
        {"input_ids": torch.randint(0, 50, (4, 6)), "labels": torch.tensor([0, 1, 2, 1])},
    )
    eager_net = copy.deepcopy(net)
    config = rxf.RXFConfig.preset(
        preset, **({"eps": 0.05, "smart_init_std": 0.02} if preset == "smart" else {})
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rxf.RXFZeroTermWarning)  # R-Drop without dropout
        expected = _steps(rxf.wrap(eager_net, config), batch)
        wrapped = rxf.wrap(net, config)
        compiled = torch.compile(wrapped, backend="aot_eager")
        assert _steps(compiled, batch) == pytest.approx(expected, rel=1e-5)
    assert wrapped.last_stats["method"] == preset
    want = grads(eager_net)
    for name, grad in grads(net).items():
        torch.testing.assert_close(grad, want[name], rtol=1e-4, atol=1e-6, msg=name)
