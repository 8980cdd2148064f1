"""The single device-to-host copy of a recorded step (``gradsight.instrument.transfer``), on every
device (``tests/devices.py``): ``to_host`` is called once per recorded step (once more at a
step that takes histograms) and, on CUDA, it is the only copy to the host and the only point
where the training thread waits for the device (counted by a dispatch mode and by torch's
sync debug mode: no profiler)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import gradsight as gs
from gradsight.instrument import histograms as histograms_module
from gradsight.instrument import monitor as monitor_module
from gradsight.instrument import transfer
from gradsight.instrument.transfer import to_host
from tests.devices import DEVICES


class ToHostCalls:
    """Stands in for ``to_host`` where the monitor and the histograms call it: counts the calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        for module in (monitor_module, histograms_module):
            monkeypatch.setattr(module, "to_host", self)

    def __call__(self, parts):
        self.calls += 1
        return to_host(parts)


class HostCopies(TorchDispatchMode):
    """Records every op that copies from a CUDA device to the host: a CPU result from a CUDA
    input (``.cpu()``, ``.to("cpu")``, ``copy_`` into a CPU tensor, ``.tolist()``) and a Python
    number read from a CUDA tensor (``.item()``, ``float()``, ``bool()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_leaves((args, kwargs or {})) if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.is_cuda for t in inputs) and (func is torch.ops.aten._local_scalar_dense.default
                                                or any(t.device.type == "cpu" for t in outputs)):
            self.copies.append(str(func))
        return out


def _model(device: str) -> nn.Module:
    """Small tensors (grouped), large ones (one by one), a convolution and biases."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 512), nn.ReLU(),
                         nn.Linear(512, 4)).to(device)


def _loss(model: nn.Module, device: str) -> torch.Tensor:
    x = torch.randn(8, 3, 8, 8, device=device)
    return nn.functional.cross_entropy(model(x), torch.arange(8, device=device) % 4)


@pytest.mark.parametrize("joined", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_to_host_copies_every_part_in_one_transfer(device, joined, monkeypatch):
    """``joined``: CPU tensors sent down the path other devices take (one ``cat``, one copy,
    then slices), as on a GPU."""
    if joined:
        monkeypatch.setattr(transfer, "_all_on_cpu", lambda parts: False)
    source = torch.arange(6.0, device=device).reshape(2, 3)
    parts = [source, None, torch.tensor(7.0, device=device), torch.zeros(0, device=device),
             torch.ones(2, 2, device=device).t()]
    got = to_host(parts)
    assert [None if g is None else g.tolist() for g in got] == [[0, 1, 2, 3, 4, 5], None, [7.0], [], [1.0] * 4]
    assert all(isinstance(g, np.ndarray) for g in got if g is not None)
    source.add_(10)  # the step's tensors may change afterwards: the host arrays are copies
    assert got[0].tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("device", DEVICES)
def test_one_transfer_per_recorded_step_and_one_more_with_histograms(tmp_path: Path, device, monkeypatch):
    """``every=2``: steps 0, 2, ..., 10 are recorded; ``histograms=2`` takes them at the 1st, 3rd and
    5th recorded step; ``update_ratio=3`` measures the optimizer steps after the 1st and 4th, whose
    ratios ride the next recorded step's transfer."""
    transfers = ToHostCalls(monkeypatch)
    model = _model(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    per_step = []
    with gs.watch(model, tmp_path / "run", optimizer=opt, every=2, histograms=2, update_ratio=3) as mon:
        for _ in range(11):
            loss = _loss(model, device)
            loss.backward()
            before = transfers.calls
            mon.step(loss)
            per_step.append(transfers.calls - before)
            opt.step()
            opt.zero_grad()
    assert per_step == [2, 0, 1, 0, 2, 0, 1, 0, 2, 0, 1]
    run = gs.open_run(tmp_path / "run")
    assert run.steps() == [0, 2, 4, 6, 8, 10]
    assert sorted(set(run.frame(stat="update_ratio").step)) == [0, 6]


def _record_run(run_dir: Path) -> gs.Run:
    torch.manual_seed(0)
    model = _model("cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    with gs.watch(model, run_dir, optimizer=opt, scaler=scaler, update_ratio=2, histograms=2) as mon:
        for step in range(6):
            loss = _loss(model, "cpu")
            scaler.scale(loss).backward()
            if step == 3:
                model[3].bias.grad[0] = float("nan")  # (a skipped step: non-finite counts, the skip)
            mon.step(loss)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    return gs.open_run(run_dir)


def test_the_joined_transfer_records_what_the_cpu_path_records(tmp_path: Path, monkeypatch):
    """Every part of a recorded step (raw sums, loss, loss scale, the zeroing check, update ratios,
    the ``adam_*`` sums) down the path a GPU takes, on CPU tensors: the same store, value for value."""
    cpu = _record_run(tmp_path / "cpu").frame()
    monkeypatch.setattr(transfer, "_all_on_cpu", lambda parts: False)
    joined = _record_run(tmp_path / "joined").frame()
    key = ["step", "level", "name", "stat"]
    cpu, joined = cpu.sort_values(key).reset_index(drop=True), joined.sort_values(key).reset_index(drop=True)
    assert len(cpu) > 500 and {"update_ratio", "loss_scale", "skipped", "grad_nonfinite"} <= set(cpu.stat)
    assert cpu[key].equals(joined[key])
    np.testing.assert_array_equal(cpu.value.to_numpy(), joined.value.to_numpy())


def _cuda_train_step(model: nn.Module, opt: torch.optim.Optimizer,
                     mon: gs.Monitor | None = None) -> tuple[list[str], list[str]]:
    """One training step on CUDA: its copies to the host (:class:`HostCopies`) and the places
    (``file:line``) where it waited for the device (torch's sync debug mode)."""
    torch.cuda.synchronize()
    copies = HostCopies()
    with warnings.catch_warnings(record=True) as caught, copies:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            loss = _loss(model, "cuda")
            loss.backward()
            if mon is not None:
                mon.step(loss)
            opt.step()
            opt.zero_grad()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchronizing" in str(w.message)]
    return copies.copies, syncs


def _watched_steps_on_cuda(tmp_path: Path) -> list[tuple[list[str], list[str]]]:
    """The copies and synchronizations of six steps of the quickstart with ``update_ratio=True``
    (snapshot, in-place difference and norms at every step), after checking that the same loop
    without gradsight has none (once the libraries are set up, at its first step)."""
    bare = _model("cuda")
    bare_opt = torch.optim.SGD(bare.parameters(), lr=0.1)
    for step in range(3):
        found = _cuda_train_step(bare, bare_opt)
        assert step == 0 or found == ([], []), f"the loop without gradsight copies to the host or waits: {found}"
    model = _model("cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=True) as mon:
        found = [_cuda_train_step(model, opt, mon) for _ in range(6)]
    assert gs.open_run(tmp_path / "run").steps() == list(range(6))
    return found


@pytest.mark.cuda
def test_a_recorded_step_on_cuda_copies_to_the_host_once(tmp_path: Path):
    """Counted from the third step on (the first ones plan the groups and lay out the rows)."""
    for step, (copies, _) in enumerate(_watched_steps_on_cuda(tmp_path)):
        if step >= 2:
            assert len(copies) == 1, f"step {step}: copies to the host {copies}"


@pytest.mark.cuda
def test_a_recorded_step_on_cuda_waits_for_the_device_once_in_the_transfer(tmp_path: Path):
    """The transfer is the only point where the training thread waits for the device: a copy from
    the host that is not ``non_blocking`` (an index list) waits as well."""
    transfer_file = Path(transfer.__file__).name
    for step, (_, syncs) in enumerate(_watched_steps_on_cuda(tmp_path)):
        if step >= 2:
            assert len(syncs) == 1 and syncs[0].startswith(transfer_file), \
                f"step {step}: waited for the device at {syncs}, expected once, in {transfer_file}"
