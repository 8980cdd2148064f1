"""``grad_dead_rows``: rows (along dim 0) of a parameter's gradient that are exactly zero,
recorded per parameter and per layer against a float64 NumPy count of the gradients."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import gradsight as gs
import gradsight.instrument.monitor as monitor_module


def numpy_dead_rows(grad: torch.Tensor) -> int:
    """Rows along dim 0 whose every element is zero, counted in float64 one row at a time."""
    x = grad.detach().to(torch.float64).numpy()
    return sum(1 for r in range(x.shape[0]) if not np.any(x[r] != 0))


class Net(nn.Module):
    """An embedding (rows of unseen tokens get no gradient), a convolution, a norm layer
    (no rows) and a linear layer with dead ReLU units."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 4)
        self.conv = nn.Conv1d(4, 6, 3, padding=1)
        self.norm = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 8)
        self.out = nn.Linear(8, 2)
        with torch.no_grad():
            self.fc.bias[[1, 5, 6]] = -1e3  # these units never fire: dead rows of fc

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.emb(tokens).transpose(1, 2)).mean(-1)
        return self.out(torch.relu(self.fc(self.norm(h))))


def test_dead_rows_match_a_float64_count_per_parameter_and_layer(tmp_path):
    torch.manual_seed(0)
    model = Net()
    expected: list[dict[str, int]] = []
    with gs.watch(model, tmp_path / "run") as mon:
        for step in range(3):
            tokens = torch.randint(0, 6 + step, (4, 5))  # tokens 6.. unseen at first
            model(tokens).pow(2).mean().backward()
            expected.append({n: numpy_dead_rows(p.grad) for n, p in model.named_parameters() if p.dim() >= 2})
            mon.step()
            model.zero_grad()
    with gs.open_run(tmp_path / "run") as run:
        params = run.series("grad_dead_rows", "param")
        layers = run.series("grad_dead_rows", "layer")
    assert sorted(params.columns) == sorted(expected[0])  # only tensors with rows
    assert sorted(layers.columns) == ["conv", "emb", "fc", "out"]  # not the norm layer
    for step, want in enumerate(expected):
        assert params.loc[step].to_dict() == {k: float(v) for k, v in want.items()}
        assert layers.loc[step, "fc"] == want["fc.weight"] >= 3  # a layer sums its tensors of >= 2 dims
        assert layers.loc[step, "emb"] == want["emb.weight"] > 0


def test_dead_rows_ride_the_single_host_transfer(tmp_path, monkeypatch):
    calls = []
    real = monitor_module.to_host

    def counting(parts):
        calls.append(len(parts))
        return real(parts)

    monkeypatch.setattr(monitor_module, "to_host", counting)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with gs.watch(model, tmp_path / "run") as mon:
        for _ in range(2):
            model(torch.randn(5, 3)).sum().backward()
            mon.step()
            model.zero_grad()
    assert len(calls) == 2  # one transfer per recorded step
    with gs.open_run(tmp_path / "run") as run:
        assert set(run.series("grad_dead_rows", "layer").columns) == {"0", "2"}
