"""Adam's state under FSDP2 (2 ranks, gloo, spawned) against one process on the global batch."""

from __future__ import annotations

import os
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import gradsight as gs

GLOBAL_BATCH = 8
STEPS = 3


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 9), nn.Tanh(), nn.Linear(9, 1))


def train(model: nn.Module, run_dir: Path, rank: int, world: int, distributed) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-3, foreach=False)
    with gs.watch(model, run_dir, optimizer=optimizer, update_ratio=True, backend="eager",
                  distributed=distributed) as monitor:
        for step in range(STEPS):
            g = torch.Generator().manual_seed(300 + step)
            x, y = torch.randn(GLOBAL_BATCH, 5, generator=g), torch.randn(GLOBAL_BATCH, 1, generator=g)
            shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
            (model(x[shard]) - y[shard]).pow(2).mean().backward()
            monitor.step()
            optimizer.step()
            optimizer.zero_grad()


def worker(rank: int, world: int, init_file: str, out: str) -> None:
    out_dir = Path(out)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=60))
        torch.set_num_threads(1)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        model = make_model()
        mesh = init_device_mesh("cpu", (world,))
        for layer in (model[0], model[2], model[4]):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        train(model, out_dir / "fsdp", rank, world, "auto")
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - any failure is written for the parent to show
        (out_dir / f"error-rank{rank}.txt").write_text(traceback.format_exc())
        os._exit(1)


def reference(run_dir: Path) -> None:
    train(make_model(), run_dir, 0, 1, None)
