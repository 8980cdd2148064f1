"""``gradsight demo``: monitored training of a plain and a residual deep MLP.

A synthetic, learnable classification task (a random teacher network labels
Gaussian inputs) keeps the demo offline and fast; both students are recorded
with the monitor at every step.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

import gradsight as gs


class _Block(nn.Module):
    def __init__(self, width: int, skip: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.act = nn.Tanh()
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.fc(x))
        return x + out if self.skip else out


class DemoMLP(nn.Module):
    """``depth`` tanh layers of width 64, with or without identity skips."""

    def __init__(self, depth: int, skip: bool, in_features: int = 32, width: int = 64, classes: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(in_features, width)
        self.blocks = nn.Sequential(*[_Block(width, skip) for _ in range(depth)])
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.inp(x)))


def synthetic_task(n: int = 4096, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g)
    teacher = torch.randn(32, 4, generator=g)
    y = (x @ teacher + 0.1 * torch.randn(n, 4, generator=g)).argmax(1)
    return x, y


def run_demo(out: Path, *, steps: int = 300, depth: int = 20, seed: int = 0) -> list[Path]:
    """Train and record both models; return the run directories."""
    x, y = synthetic_task(seed=seed)
    runs = []
    for skip in (False, True):
        torch.manual_seed(seed)
        model = DemoMLP(depth, skip)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        name = f"{'residual' if skip else 'plain'}-mlp{depth}"
        run_dir = out / name
        gen = torch.Generator().manual_seed(seed)
        with gs.watch(model, run_dir, optimizer=opt, overwrite=True, name=name,
                      config={"depth": depth, "skip": skip, "steps": steps, "seed": seed}) as mon:
            bar = tqdm(range(steps), desc=name, unit="step")
            for _ in bar:
                idx = torch.randint(0, len(x), (64,), generator=gen)
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                mon.step(loss)
                opt.step()
                opt.zero_grad()
                bar.set_postfix(loss=f"{loss.item():.3f}")
            with torch.no_grad():
                acc = (model(x).argmax(1) == y).float().mean().item()
            mon.log({"train_acc": acc})
        runs.append(run_dir)
        print(f"{name}: train accuracy {acc:.3f}; run written to {run_dir}")
    print(f"inspect with: gradsight info {runs[0]}")
    return runs
