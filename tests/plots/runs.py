"""Small recorded runs for the picture tests (plots, report): a few layers, a few steps."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

import gradsight as gs


class TinyNet(nn.Module):
    """``depth`` tanh layers of width 6 between an input and a head; optional identity skips."""

    def __init__(self, depth: int, skip: bool) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.blocks = nn.Sequential(OrderedDict((f"fc{i}", nn.Linear(6, 6)) for i in range(depth)))
        self.head = nn.Linear(6, 3)
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        for layer in self.blocks:
            h = h + torch.tanh(layer(h)) if self.skip else torch.tanh(layer(h))
        return self.head(h)


def make_run(run_dir: Path, *, depth: int = 4, skip: bool = False, steps: int = 12, nan_at: int | None = None,
             name: str | None = None, seed: int = 0, every: int = 1, update_ratio: bool | int = True) -> Path:
    """Record ``steps`` SGD steps of a :class:`TinyNet` (``update_ratio`` as in ``gs.watch``);
    at step ``nan_at`` the gradient of ``blocks.fc1.weight`` gets a NaN (and the optimizer
    step is skipped)."""
    torch.manual_seed(seed)
    model = TinyNet(depth, skip)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    config = {"family": "residual" if skip else "plain", "depth": depth + 2, "skip": skip}
    with gs.watch(model, run_dir, optimizer=opt, config=config, name=name, overwrite=True, every=every,
                  update_ratio=update_ratio) as mon:
        for step in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if step == nan_at:
                model.blocks.fc1.weight.grad[0, 0] = float("nan")
            mon.step(loss)
            if step != nan_at:
                opt.step()
            opt.zero_grad()
        mon.log({"accuracy": 0.5})
    return run_dir


class NormedNet(nn.Module):
    """conv -> batch norm -> conv -> batch norm -> linear head: norm layers between the weighted ones."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        return self.fc(h.mean(dim=(2, 3)))


def make_normed_run(run_dir: Path, steps: int = 2) -> Path:
    """Record ``steps`` backward passes of a :class:`NormedNet` (layers c1, b1, c2, b2, fc)."""
    torch.manual_seed(0)
    model = NormedNet()
    with gs.watch(model, run_dir) as mon:
        for _ in range(steps):
            model(torch.randn(4, 1, 6, 6)).pow(2).mean().backward()
            mon.step()
            model.zero_grad()
    return run_dir
