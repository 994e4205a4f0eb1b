"""DeepSpeed ZeRO-2 and ZeRO-3 (CPU, gloo, 2 processes) against a single-process reference.

``deepspeed.initialize(model=rxf.wrap(model))``: the wrapper goes in before DeepSpeed
partitions anything. DeepSpeed clips gradients at 1.0 unless ``gradient_clipping`` says
otherwise; the runs set 0.0 (off) so they are comparable with plain SGD. The checkpoint's
consolidated fp32 weights (``get_fp32_state_dict_from_zero_checkpoint``, the library form of
``zero_to_fp32.py``) carry the wrapper's own parameter names and load into a fresh wrapped
model.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import rxf
from tests.integration import ddp_worker
from tests.integration.conftest import tiny_bert
from tests.integration.recipes import run_recipe
from tests.integration.test_ddp import WORLD, _free_port, _PerRankNoise

deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (rxf[stacks])")
pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")

RUNS = {"zero2": (2, False), "zero3": (3, False), "zero2_r4f": (2, True)}  # stage, R4F


def ds_config(stage: int) -> dict[str, object]:
    return {
        "train_micro_batch_size_per_gpu": ddp_worker.GLOBAL_BATCH // WORLD,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0,  # DeepSpeed's default clips at 1.0
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,  # a plain torch SGD
    }


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    import deepspeed.comm.torch as ds_torch

    ds_torch.build_shm_op = lambda: None  # the tests skip DeepSpeed's JIT-built CPU comm op
    deepspeed.init_distributed(dist_backend="gloo")
    try:
        for name, (stage, r4f) in RUNS.items():
            model = tiny_bert()
            wrapped = rxf.wrap(model, **ddp_worker.RXF, spectral_norm_head=r4f)
            engine, *_ = deepspeed.initialize(
                model=wrapped,
                optimizer=torch.optim.SGD(wrapped.parameters(), lr=0.5),
                config=ds_config(stage),
            )
            torch.manual_seed(ddp_worker.SEED + rank)  # the per-rank seeding rule
            for batch in ddp_worker.global_batches():
                loss = engine(**ddp_worker._local(batch, rank, world)).loss
                engine.backward(loss)
                engine.step()
            assert wrapped.last_stats["noise_to_signal"] > 0
            engine.save_checkpoint(str(Path(out_dir) / name), tag="last")
        batch = ddp_worker._local(ddp_worker.global_batches()[0], rank, world)
        recipe_dir = Path(out_dir) / "recipe"
        ns = run_recipe("deepspeed", model=tiny_bert(), batch=batch, output_dir=str(recipe_dir))
        if rank == 0:
            (recipe_dir / "noise.txt").write_text(str(ns["wrapped"].last_stats["noise_to_signal"]))
    finally:
        dist.destroy_process_group()


@functools.cache
def _reference(r4f: bool) -> dict[str, torch.Tensor]:
    noise = _PerRankNoise()
    pm = rxf.plugin_manager()
    pm.register(noise)
    try:
        model = tiny_bert()
        wrapped = rxf.wrap(
            model, **ddp_worker.RXF, noise_type="test_per_rank", spectral_norm_head=r4f
        )
        ddp_worker.train(wrapped, ddp_worker.global_batches())
    finally:
        pm.unregister(noise)
    return model.state_dict()


@pytest.fixture(scope="module")
def zero_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deepspeed")
    torch.multiprocessing.spawn(
        worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True
    )
    return out


def _consolidated(out: Path, name: str) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(out / name), tag="last")


@pytest.mark.parametrize("name", list(RUNS))
def test_zero_matches_single_process_and_reloads_into_the_wrapper(
    zero_results: Path, name: str
) -> None:
    r4f = RUNS[name][1]
    state = _consolidated(zero_results, name)
    fresh = rxf.wrap(tiny_bert(), **ddp_worker.RXF, spectral_norm_head=r4f)
    # zero_to_fp32 names parameters as the engine's module does and takes buffers from its
    # state_dict: the two agree, and are the inner model's keys
    assert set(state) == set(fresh.state_dict()) == set(fresh.module.state_dict())
    fresh.load_state_dict(state, strict=True)
    if not r4f:
        tiny_bert().load_state_dict(state, strict=True)
    reference, start = _reference(r4f), tiny_bert().state_dict()
    trained = fresh.module.state_dict()
    assert max((trained[k] - start[k]).abs().max().item() for k in start if k in trained) > 1e-2
    assert max((trained[k] - reference[k]).abs().max().item() for k in reference) < 1e-5


def test_docs_recipe_runs_on_two_processes(zero_results: Path) -> None:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    assert float((zero_results / "recipe" / "noise.txt").read_text()) > 0
    state = get_fp32_state_dict_from_zero_checkpoint(str(zero_results / "recipe" / "ckpt"))
    tiny_bert().load_state_dict(state, strict=True)  # the inner model's keys
