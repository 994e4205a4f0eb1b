"""DDP with reentrant checkpointing (one gloo process, in this process): refused in two-pass
mode with the fixes named; concat mode and ``static_graph=True`` run and match the unchecked
single-process step."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import rxf
from tests.core.test_never_silent import LlamaLike

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")
BATCH = {
    "input_ids": torch.randint(0, 40, (4, 5), generator=torch.Generator().manual_seed(1)),
    "labels": torch.tensor([0, 1, 2, 0]),
}


@pytest.fixture
def one_process_group(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _step(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model(**BATCH)["loss"].backward()
    inner = rxf.unwrap(model)
    return {n: p.grad.clone() for n, p in inner.named_parameters()}


def test_two_pass_with_reentrant_checkpointing_under_ddp_is_refused(one_process_group) -> None:
    torch.manual_seed(0)
    model = DDP(rxf.wrap(LlamaLike(reentrant=True), eps=0.3))
    with pytest.raises(rxf.RXFError, match=r"mode='concat'.*static_graph=True.*use_reentrant"):
        model(**BATCH)


@pytest.mark.parametrize("fix", ["concat", "static_graph"])
def test_the_named_fixes_run_and_match_the_unchecked_step(fix: str, one_process_group) -> None:
    torch.manual_seed(0)
    plain = LlamaLike()
    checked = copy.deepcopy(plain)
    checked.reentrant = True
    mode = "concat" if fix == "concat" else "two_pass"
    want = _step(rxf.wrap(plain, eps=0.3, mode=mode))
    ddp = DDP(rxf.wrap(checked, eps=0.3, mode=mode), static_graph=fix == "static_graph")
    got = _step(ddp)
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_r4f_after_fully_shard_is_refused_with_the_order_to_use(one_process_group) -> None:
    from torch.distributed.fsdp import fully_shard

    from tests.core.conftest import TinyClassifier

    model = TinyClassifier()
    fully_shard(model)  # the head's weight is now a DTensor shard
    with pytest.raises(rxf.RXFError, match=r"DTensor.*Wrap before sharding"):
        rxf.wrap(model, spectral_norm_head=True)
