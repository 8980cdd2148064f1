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


class _Scaled(nn.Module):
    """``x + scale * f(x)`` with ``f`` a one-hidden-layer MLP (a block behind a LayerScale)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 16), nn.Linear(16, 16)
        self.gamma = nn.Parameter(torch.full((16,), scale))

    def forward(self, x):
        return x + self.gamma * self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize(("scale", "flagged"), [(1e-9, False), (1.0, False)])
def test_a_branch_behind_a_small_initialized_scale_is_not_eps_dominated(tmp_path, scale, flagged):
    """A LayerScale of 1e-9 (kept there by a learning rate of 1e-9) puts the branch's gradients
    under eps for the whole run, by design (its layers' adam_eps_frac is 1 over the window):
    left out, as update_ratio_low leaves them out, while the model's other layers are not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), _Scaled(scale), nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-9)
    with gs.watch(model, tmp_path / "run", optimizer=optimizer, update_ratio=True, backend="eager") as monitor:
        for _ in range(12):
            x = torch.randn(32, 4)
            (model(x) - x[:, :1]).pow(2).mean().backward()
            monitor.step()
            optimizer.step()
            optimizer.zero_grad()
    with gs.RunView(tmp_path / "run") as view:
        frac = view.matrix("layer", "adam_eps_frac", steps="all")
        findings = [f for f in gs.diagnose(view) if f.code == "eps_dominated"]
    if scale < 1e-3:
        assert (frac[["1.fc1", "1.fc2"]].iloc[6:] > EPS_DOMINATED_FRAC).all().all()  # what is left out
        assert (frac[["0", "2"]].iloc[6:] < 0.1).all().all()
    assert bool(findings) == flagged


class _RowScaled(nn.Module):
    """A linear map whose first two thirds of output rows are scaled by a fixed 1e-7 (a buffer):
    their gradients sit far below eps by structure, like the query and key rows of attention
    over a single token, while the last third carries the layer's gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 48)
        self.register_buffer("row_scale", torch.cat([torch.full((32,), 1e-7), torch.ones(16)]))

    def forward(self, x):
        return self.fc(x) * self.row_scale


@pytest.mark.parametrize("recorded_eps", [True, False])
def test_rows_below_eps_by_structure_are_not_eps_dominated(tmp_path, recorded_eps):
    """Most of the layer's elements have ``sqrt(v_hat) < eps`` (``adam_eps_frac`` about 2/3), yet
    they can hold at most ``frac * eps^2 / mean(v_hat)`` of its gradient energy, about 1e-9: not
    eps-dominated. A run that did not record the optimizer's eps (before ``adam_eps`` was in its
    metadata) is judged as before, by the fraction alone."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), _RowScaled(), nn.Linear(48, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with gs.watch(model, tmp_path / "run", optimizer=optimizer, update_ratio=2, backend="eager") as monitor:
        for _ in range(20):
            x = torch.randn(16, 8)
            (model(x) - x[:, :1]).pow(2).mean().backward()
            monitor.step()
            optimizer.step()
            optimizer.zero_grad()
    if not recorded_eps:
        import sqlite3

        from gradsight.store import DB_NAME

        with sqlite3.connect(tmp_path / "run" / DB_NAME) as conn:
            conn.execute("DELETE FROM meta WHERE key = 'adam_eps'")
    with gs.RunView(tmp_path / "run") as view:
        assert view.meta.get("adam_eps") == (1e-8 if recorded_eps else None)
        frac = view.matrix("layer", "adam_eps_frac", steps="all")
        findings = [f for f in gs.diagnose(view) if f.code == "eps_dominated"]
    assert (frac["2.fc"].iloc[-5:] > EPS_DOMINATED_FRAC).all()
    assert bool(findings) == (not recorded_eps)
