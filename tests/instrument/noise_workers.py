"""Training code of the noise scale tests: DDP on 2 ranks (gloo, spawned) against gradient
accumulation in one process, on the same micro-batches.

The global batch of a step is ``2 * PER_RANK * MICRO`` samples split into micro-batches of
``MICRO``: under DDP rank ``r`` backpropagates its ``PER_RANK`` micro-batches (all but the
last under ``no_sync``); the reference accumulates all of them in one process, each loss
divided by their number, which gives the same averaged gradient.
"""

from __future__ import annotations

import os
import traceback
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import gradsight as gs

MICRO = 4  #: samples per micro-batch
STEPS = 4


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3), nn.Tanh(), nn.Linear(3, 1))


def micro_batches(step: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``count`` micro-batches of a step's global batch (the same in every process)."""
    g = torch.Generator().manual_seed(200 + step)
    x = torch.randn(count * MICRO, 5, generator=g)
    y = torch.randn(count * MICRO, 1, generator=g)
    return [(x[j * MICRO:(j + 1) * MICRO], y[j * MICRO:(j + 1) * MICRO]) for j in range(count)]


def train(model: nn.Module, ddp: nn.Module, run_dir: Path, rank: int, world: int, per_rank: int) -> None:
    """``STEPS`` SGD steps; this process backpropagates its ``per_rank`` micro-batches of each step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, run_dir, backend="eager", noise_scale=MICRO) as monitor:
        for step in range(STEPS):
            mine = micro_batches(step, world * per_rank)[rank * per_rank:(rank + 1) * per_rank]
            for j, (x, y) in enumerate(mine):
                sync = j == per_rank - 1 or not isinstance(ddp, nn.parallel.DistributedDataParallel)
                with nullcontext() if sync else ddp.no_sync():
                    ((ddp(x) - y).pow(2).mean() / per_rank).backward()
            monitor.step()
            optimizer.step()
            optimizer.zero_grad()


def worker(rank: int, world: int, init_file: str, out: str) -> None:
    """Rank ``rank``: DDP with one micro-batch per rank (``out/ddp1``), then with two (``out/ddp2``)."""
    out_dir = Path(out)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=60))
        torch.set_num_threads(1)
        for per_rank in (1, 2):
            model = make_model()
            ddp = nn.parallel.DistributedDataParallel(model)
            train(model, ddp, out_dir / f"ddp{per_rank}", rank, world, per_rank)
            dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - any failure is written for the parent to show
        (out_dir / f"error-rank{rank}.txt").write_text(traceback.format_exc())
        os._exit(1)


def reference(run_dir: Path, micro: int) -> None:
    """One process accumulating all ``micro`` micro-batches of each step."""
    model = make_model()
    train(model, model, run_dir, 0, 1, micro)
