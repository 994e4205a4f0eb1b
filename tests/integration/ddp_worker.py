"""Worker processes for test_ddp.py (imported by torch.multiprocessing.spawn; not a test module).

Every rank seeds ``SEED + rank`` after building the model: the documented rule that makes the
noise reproducible and independent per rank.
"""

from __future__ import annotations

import os
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import rxf
from tests.integration.conftest import bert_batch, tiny_bert

SEED = 100
STEPS = 3
GLOBAL_BATCH = 8
RXF = {"eps": 0.1, "r3f_lambda": 2.0}
# SMART with a ball and steps large enough that every part of the ascent moves the weights
SMART = {
    "method": "smart",
    "noise_type": "uniform",
    "eps": 0.05,
    "smart_init_std": 0.02,
    "smart_step_size": 0.1,
    "smart_steps": 2,
}


def global_batches() -> list[dict[str, torch.Tensor]]:
    return [bert_batch(batch=GLOBAL_BATCH, tokens=10, seed=step) for step in range(STEPS)]


def train(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> None:
    """A few SGD steps; ``model`` is a DDP or a wrapped model, ``batches`` its share of data."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for batch in batches:
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()


def _local(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    size = GLOBAL_BATCH // world
    return {k: v[rank * size : (rank + 1) * size] for k, v in batch.items()}


def _scenario(name: str, rank: int, world: int, out: Path, **extra: object) -> None:
    model = tiny_bert()
    ckpt = extra.pop("ckpt", None)
    if extra.pop("checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt)
    torch.manual_seed(SEED + rank)  # the per-rank seeding rule
    ddp = DDP(rxf.wrap(model, {**RXF, **extra}))
    train(ddp, [_local(b, rank, world) for b in global_batches()])
    if rank == 0:
        torch.save({k: v.detach() for k, v in model.state_dict().items()}, out / f"{name}.pt")


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", FutureWarning)
    dist.init_process_group(  # a short timeout: a crashed rank must not hang the suite
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=120),
    )
    out = Path(out_dir)
    try:
        _scenario("two_pass", rank, world, out)
        _scenario("smart", rank, world, out, **SMART)
        _scenario("concat", rank, world, out, mode="concat")
        _scenario("checkpointing", rank, world, out, checkpointing=True)
        # reentrant checkpointing re-runs layers in backward: DDP then needs one forward per
        # step (concat) or DDP(static_graph=True)
        _scenario(
            "reentrant_concat",
            rank,
            world,
            out,
            checkpointing=True,
            mode="concat",
            ckpt={"use_reentrant": True},
        )
        try:
            rxf.wrap(DDP(tiny_bert()))  # DDP() is collective: every rank builds it
        except rxf.RXFError as exc:
            if rank == 0:
                (out / "refusal.txt").write_text(str(exc))
    finally:
        dist.destroy_process_group()
