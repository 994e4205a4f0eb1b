"""DistributedDataParallel (gloo, CPU, 2 processes) against a single-process reference."""

from __future__ import annotations

import functools
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import rxf
from tests.integration import ddp_worker
from tests.integration.conftest import tiny_bert

WORLD = 2
pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _PerRankNoise:
    """Single-process stand-in for the ranks' draws: rows of rank r come from a generator
    seeded ``SEED + r`` (what rank r's global RNG holds after ``torch.manual_seed``)."""

    def __init__(self, same_for_all: bool = False) -> None:
        seeds = (
            [ddp_worker.SEED] * WORLD
            if same_for_all
            else [ddp_worker.SEED + r for r in range(WORLD)]
        )
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, embeddings: torch.Tensor, eps: float, mask=None) -> torch.Tensor:
        chunks = embeddings.shape[0] // WORLD
        shape = (chunks, *embeddings.shape[1:])
        return torch.cat(
            [torch.empty(shape).uniform_(-eps, eps, generator=g) for g in self.generators]
        )

    @rxf.hookimpl
    def rxf_register_noise_types(self) -> dict[str, object]:
        return {"test_per_rank": self}


@functools.cache
def _reference(same_for_all: bool = False, smart: bool = False) -> dict[str, torch.Tensor]:
    noise = _PerRankNoise(same_for_all)
    pm = rxf.plugin_manager()
    pm.register(noise)
    config = {**ddp_worker.RXF, **(ddp_worker.SMART if smart else {})}
    try:
        model = tiny_bert()
        ddp_worker.train(
            rxf.wrap(model, {**config, "noise_type": "test_per_rank"}),
            ddp_worker.global_batches(),
        )
    finally:
        pm.unregister(noise)
    return model.state_dict()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(
        ddp_worker.worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True
    )
    return out


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.parametrize("scenario", ["two_pass", "concat", "checkpointing", "reentrant_concat"])
def test_ddp_matches_single_process_global_batch(ddp_results: Path, scenario: str) -> None:
    ddp = torch.load(ddp_results / f"{scenario}.pt")
    reference = _reference()
    start = tiny_bert().state_dict()
    assert _max_diff(ddp, start) > 1e-2  # training moved the weights
    assert _max_diff(ddp, reference) < 1e-5


def test_smart_under_ddp_matches_one_process(ddp_results: Path) -> None:
    """SMART's ascent takes gradients w.r.t. the perturbation only: no DDP reduction inside
    it, so 2 gloo processes give the parameters of one process over the global batch."""
    ddp = torch.load(ddp_results / "smart.pt")
    assert _max_diff(ddp, tiny_bert().state_dict()) > 1e-2  # training moved the weights
    assert _max_diff(ddp, _reference()) > 1e-4  # SMART, not R3F, ran
    assert _max_diff(ddp, _reference(smart=True)) < 1e-5


def test_ddp_ranks_draw_independent_noise(ddp_results: Path) -> None:
    # had both ranks drawn the same noise, the reference with one shared stream would match
    ddp = torch.load(ddp_results / "two_pass.pt")
    assert _max_diff(ddp, _reference(same_for_all=True)) > 1e-4


def test_wrapping_ddp_is_refused_with_the_fix(ddp_results: Path) -> None:
    message = (ddp_results / "refusal.txt").read_text()
    assert "DDP(rxf.wrap(model))" in message
