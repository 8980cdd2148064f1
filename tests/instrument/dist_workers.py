"""Training code run by every process of the distributed tests (spawned, 2 ranks: gloo on the
CPU, or NCCL with one GPU per rank).

Kept in an importable module so ``torch.multiprocessing`` can start it. The same
functions, run in one process on the global batch, give the reference run.
"""

from __future__ import annotations

import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import gradsight as gs

GLOBAL_BATCH = 8
STEPS = 3
NAN_STEP = 2  #: at this step one sample of rank 0's shard is NaN


class Net(nn.Module):
    """Odd sizes (uneven shards), a 1-unit head (rank 1's bias shard is empty under
    FSDP with 2 ranks), an unused layer (no gradient anywhere) and a frozen one."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 7)
        self.hidden = nn.Linear(7, 9)
        self.frozen = nn.Linear(9, 9)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(9, 1)
        self.unused = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        h = torch.relu(self.hidden(h))
        h = self.frozen(h) + h
        return self.head(h)


def make_model() -> Net:
    torch.manual_seed(0)
    return Net()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of a step (same on every rank)."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(GLOBAL_BATCH, 5, generator=g)
    y = torch.randn(GLOBAL_BATCH, 1, generator=g)
    if step == NAN_STEP:
        x[0, 0] = float("nan")
    return x, y


def train(model: nn.Module, monitored: nn.Module, run_dir: Path, rank: int, world: int, distributed,
          zero: bool = True) -> None:
    """``STEPS`` SGD steps of ``model`` on this rank's shard of each global batch, on the device
    of its parameters (``zero=False``: with the gradients never zeroed)."""
    device = next(monitored.parameters()).device
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    with gs.watch(monitored, run_dir, optimizer=optimizer, backend="eager", distributed=distributed,
                  histograms=2, update_ratio=True) as monitor:
        for step in range(STEPS):
            x, y = batch(step)
            shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
            loss = (model(x[shard].to(device)) - y[shard].to(device)).pow(2).mean()
            loss.backward()
            monitor.step()
            optimizer.step()
            if zero:
                optimizer.zero_grad()


def reference(run_dir: Path, zero: bool = True) -> None:
    """The single-process run on the global batch."""
    model = make_model()
    train(model, model, run_dir, rank=0, world=1, distributed=None, zero=zero)


def run_to_end(target, *args) -> None:
    """Run a worker, then leave the process at once: past ``destroy_process_group`` the gloo
    backend's threads can abort the interpreter's teardown ("terminate called without an active
    exception", seen once in a full test run), which says nothing of what the worker did (its
    results are in its files by then; a failure has left with exit code 1 already)."""
    target(*args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def worker(rank: int, world: int, init_file: str, out: str, backend: str = "gloo") -> None:
    """Rank ``rank``: a DDP run, then an FSDP2 run, each into ``out/<case>-rank<rank>``; with
    ``backend="nccl"`` the DDP run only, on GPU ``rank``, into ``out/ddp-nccl-rank<rank>``."""
    out_dir = Path(out)
    try:
        dist.init_process_group(
            backend, init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
        )
        torch.set_num_threads(1)
        if backend == "nccl":
            torch.cuda.set_device(rank)
            model = make_model().cuda(rank)
            ddp = nn.parallel.DistributedDataParallel(model, device_ids=[rank], find_unused_parameters=True)
            train(ddp, model, out_dir / f"ddp-nccl-rank{rank}", rank, world, "auto")
            dist.barrier()
            dist.destroy_process_group()
            return

        model = make_model()
        ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        train(ddp, model, out_dir / f"ddp-rank{rank}", rank, world, "auto")
        model = make_model()
        ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        train(ddp, model, out_dir / f"ddp-forgotten-rank{rank}", rank, world, "auto", zero=False)

        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        model = make_model()
        mesh = init_device_mesh("cpu", (world,))
        for layer in (model.inp, model.hidden, model.head):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        train(model, model, out_dir / f"fsdp-rank{rank}", rank, world, "auto")

        from torch.distributed.fsdp import FullyShardedDataParallel

        legacy = FullyShardedDataParallel(make_model(), use_orig_params=True, device_id=torch.device("cpu"))
        for target in (legacy, legacy.module):  # the wrapper, or the module inside it
            try:
                gs.watch(target, out_dir / f"fsdp1-rank{rank}", distributed="auto")
            except NotImplementedError as exc:
                (out_dir / f"fsdp1-rank{rank}.txt").open("a").write(f"{exc}\n")
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        (out_dir / f"error-rank{rank}.txt").write_text(traceback.format_exc())
        os._exit(1)


#: Steps of each part of the resumed run (``resume_worker``), recorded every 2nd.
RESUME_STEPS = 5


def resume_worker(rank: int, world: int, init_file: str, out: str) -> None:
    """Rank ``rank``: a DDP run of ``RESUME_STEPS`` steps into ``out/run``, closed, then continued with
    ``resume=True`` for as many; writes where each rank's monitor went on, and the steps it recorded."""
    out_dir = Path(out)
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
        )
        torch.set_num_threads(1)
        model = make_model()
        ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
        seen = []
        for part, resume in enumerate((False, True)):
            with gs.watch(model, out_dir / "run", backend="eager", every=2, resume=resume) as monitor:
                for step in range(part * RESUME_STEPS, (part + 1) * RESUME_STEPS):
                    x, y = batch(step)
                    (ddp(x) - y).pow(2).mean().backward()
                    if monitor.step():
                        seen.append(step)
                    optimizer.step()
                    optimizer.zero_grad()
                start = monitor.resumption.start
            dist.barrier()
        (out_dir / f"resume-rank{rank}.txt").write_text(f"{start} {seen}")
        dist.destroy_process_group()
    except BaseException:
        (out_dir / f"error-rank{rank}.txt").write_text(traceback.format_exc())
        os._exit(1)
