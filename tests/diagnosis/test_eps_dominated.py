"""``eps_dominated``: Adam's eps against the gradient scale it divides by (``adam_eps_frac``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.diagnosis.rules import EPS_DOMINATED_FRAC


def _run(run_dir, eps: float, loss_scale: float):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=eps)
    with gs.watch(model, run_dir, optimizer=optimizer, update_ratio=2, backend="eager") as monitor:
        for _ in range(20):
            x = torch.randn(16, 8)
            ((model(x) - x[:, :1]).pow(2).mean() * loss_scale).backward()
            monitor.step()
            optimizer.step()
            optimizer.zero_grad()
    return [f for f in gs.diagnose(run_dir) if f.code == "eps_dominated"]


def test_a_healthy_adam_run_is_not_eps_dominated(tmp_path):
    assert _run(tmp_path / "run", eps=1e-8, loss_scale=1.0) == []


@pytest.mark.parametrize(("eps", "loss_scale"), [(1e-8, 1e-8), (1.0, 1.0)])
def test_tiny_gradients_or_a_large_eps_are_eps_dominated(tmp_path, eps, loss_scale):
    (finding,) = _run(tmp_path / "run", eps, loss_scale)
    assert str(finding.severity) == "warning"
    assert finding.layers == ["0", "2", "4"]
    assert finding.measured["eps_frac_max"] > EPS_DOMINATED_FRAC
    assert finding.measured["update_rms_median"] < 0.1  # far below Adam's O(0.1-1)
    assert "eps dominates the update of 3 of 3 layers" in finding.message
