"""``benchmarks/peers.py``'s floor rows: one ``_foreach_norm`` pass gives every tensor's norm
(checked against float64), and each gradsight row's extra time is read against its floor."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import load_benchmark


@pytest.fixture
def peers(monkeypatch):
    return load_benchmark("peers", monkeypatch)


def test_floor_rows_give_every_norm_in_one_pass(peers):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model(torch.randn(5, 8)).pow(2).mean().backward()
    for weights in (False, True):
        row = peers.Floor("floor", weights=weights)
        row.after_backward(model, None, 0)
        tensors = [p.grad for p in model.parameters()] + ([p.detach() for p in model.parameters()] if weights else [])
        expected = torch.tensor([float(t.double().pow(2).sum().sqrt()) for t in tensors])
        assert row.last.device.type == "cpu"
        torch.testing.assert_close(row.last.double(), expected.double(), rtol=1e-6, atol=0)


def test_extra_time_is_read_against_the_matching_floor(peers, tmp_path):
    cells = {"bare": peers.Cell(1.0, 1.0, 1.0, 10.0), "floor": peers.Cell(1.2, 1.1, 1.3, 12.0),
             "floor_weights": peers.Cell(1.3, 1.2, 1.4, 13.0), "grads": peers.Cell(1.5, 1.4, 1.6, 15.0),
             "quickstart": peers.Cell(1.6, 1.5, 1.7, 16.0)}
    assert peers.extra_over_floor(cells, "grads") == pytest.approx(0.5 / 0.2)
    assert peers.extra_over_floor(cells, "quickstart") == pytest.approx(0.6 / 0.3)
    assert peers.extra_over_floor(cells, "activations") is None
    cells["floor"] = peers.Cell(1.02, 0.97, 1.08, 10.2)  # the floor within the noise of the rounds
    assert peers.extra_over_floor(cells, "grads") is None
    torch.manual_seed(0)
    problem = peers.Problem("tiny", nn.Linear(4, 4), lambda m: m(torch.randn(2, 4)).pow(2).mean())
    rows = {k: peers.all_rows()[k] for k in ("bare", "floor", "floor_weights")}
    measured, done = peers.bench(problem, rows, rounds=3, warmup=1, deadline=0.0, tmp=tmp_path)
    assert done == 3 and set(measured) == set(rows) and measured["bare"].ratio == 1.0


def test_memory_column_reads_the_peak_rss_of_a_row_and_widths_size_the_mlp(peers, tmp_path):
    torch.manual_seed(0)
    problem = peers.mlp_problem(8)
    assert problem.model[0].weight.shape == (8, 8) and peers.weight_mb(1024) == pytest.approx(50.38, abs=0.01)
    held = 64 * 2**20
    row = peers.all_rows()["bare"]
    row.after_backward = lambda model, loss, step: setattr(row, "held", torch.ones(held // 4))  # 64 MiB held
    start = peers.rss_bytes()
    assert peers.peak_rss(problem, row, steps=2, tmp=tmp_path) >= start + held * 0.9


def test_the_noise_floor_row_takes_each_micro_batchs_norm(peers, tmp_path):
    """The noise scale's floor reads what the noise scale reads: each micro-batch's gradient
    norm per parameter (against autograd's gradients of each micro-batch's loss, in float64)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))
    batches = [torch.randn(4, 6) for _ in range(2)]
    fed = iter(batches)  # one batch per micro-batch
    problem = peers.Problem("tiny", model, lambda m: m(next(fed)).pow(2).mean())
    row = peers.all_rows()["noise_floor"]
    assert row.micro_batches == 2
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    expected = []
    for x in batches:  # before the step changes the weights
        grads = torch.autograd.grad(model(x).pow(2).mean() / 2, list(model.parameters()))
        expected.append([float(g.double().norm()) for g in grads])
    row.setup(model, opt, tmp_path / "run")
    try:
        peers.train_step(problem, model, opt, row, 0)
    finally:
        row.close()
    torch.testing.assert_close(row.last.double(), torch.tensor(expected, dtype=torch.float64).T, rtol=1e-5, atol=0)
