"""Runs recorded with ``noise_scale=`` whose noise scale is known in closed form, for the rule,
figure and command tests.

A linear model ``w·x + c`` on ``x ~ N(0, I_4)``, ``y = x·1 + σ ε``, its weights held off the
optimum by ``Δ = 0.5`` in every coordinate (no optimizer step): the squared loss's gradient
is ``G = 2 (Δ, 0)``, ``|G|² = 4 |Δ|² = 4``, and the per-sample gradients' trace ``tr(Σ) =
4 ((|Δ|² + σ²)(d + 1) + 2 |Δ|²) - |G|²`` (``d = 4``; Isserlis), so ``B_simple`` is 6 with
``σ = 0`` and 506 with ``σ = 10``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import gradsight as gs

STEPS = 60


def record(run_dir: Path, noise: float, micro: int, accumulate: int, *, steps: int = STEPS) -> Path:
    """``steps`` recorded steps of ``accumulate`` micro-batches of ``micro`` samples."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    with torch.no_grad():
        model.weight.fill_(1.5)
        model.bias.zero_()
    with gs.watch(model, run_dir, noise_scale=micro, backend="eager") as monitor:
        for _ in range(steps):
            for _ in range(accumulate):
                x = torch.randn(micro, 4)
                y = x.sum(1, keepdim=True) + noise * torch.randn(micro, 1)
                ((model(x) - y).pow(2).mean() / accumulate).backward()
            monitor.step()
            model.zero_grad()
    return run_dir
