"""Shattered gradients (Balduzzi et al. 2017): dy/dx along a line and its autocorrelation."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch
from torch import nn

from gradsight.cli import main
from gradsight.models import create_model
from gradsight.probes import shattering
from gradsight.probes.shattered_gradients import autocorrelation, batch_statistics_frozen, spectral_flatness

from .conftest import no_hooks_left


def scalar_mlp(name: str, depth: int, width: int = 200, **kwargs: object) -> nn.Module:
    """The paper's setting: ReLU, He init, biases, batch norm, one input, one output."""
    options = {"in_features": 1, "num_classes": 1, "norm": "batch", "bias": True, "init": "he"}
    return create_model(name, depth=depth, width=width, **{**options, **kwargs})


def test_autocorrelation_matches_a_python_loop() -> None:
    g = torch.randn(40, dtype=torch.float64).cumsum(0)
    c = (g - g.mean()).tolist()
    energy = sum(ci * ci for ci in c)
    reference = [sum(c[i] * c[i + k] for i in range(40 - k)) / energy for k in range(40)]
    torch.testing.assert_close(autocorrelation(g), torch.tensor(reference, dtype=torch.float64))
    assert autocorrelation(torch.ones(5)).eq(0).all()


def test_white_and_brown_noise_give_the_reference_values() -> None:
    white = [torch.randn(256) for _ in range(20)]
    brown = [w.cumsum(0) for w in white]
    white_lag1 = [float(autocorrelation(w)[1]) for w in white]
    assert abs(statistics.mean(white_lag1)) < 0.05 and max(map(abs, white_lag1)) < 0.25
    assert min(float(autocorrelation(b)[1]) for b in brown) > 0.9
    assert 0.45 < statistics.mean(spectral_flatness(w) for w in white) < 0.67  # e^-0.577 = 0.56
    assert max(spectral_flatness(b) for b in brown) < 0.1


def test_per_point_derivatives_match_a_loop_and_finite_differences() -> None:
    model = scalar_mlp("mlp", depth=6, width=16).double()
    result = shattering(model, n_points=32)
    x = result.x.unsqueeze(1)
    with batch_statistics_frozen(model, x):
        looped = []
        for point in x:  # one point at a time, as a batch of one
            xi = point.view(1, 1).clone().requires_grad_()
            looped.append(torch.autograd.grad(model(xi).sum(), xi)[0].item())
        h = 1e-6
        central = ((model(x + h) - model(x - h)) / (2 * h)).flatten()
    torch.testing.assert_close(result.grad, torch.tensor(looped, dtype=torch.float64))
    torch.testing.assert_close(result.grad, central, rtol=1e-5, atol=1e-6)


def test_batch_norm_uses_the_statistics_of_the_points() -> None:
    """y equals a training-mode forward pass over the same batch (biased variance, as BN uses)."""
    model = scalar_mlp("resmlp", depth=6, width=16).double()
    result = shattering(model, n_points=64)
    model.train()
    with torch.no_grad():
        torch.testing.assert_close(result.y, model(result.x.unsqueeze(1)).flatten())


def test_model_state_is_left_as_it_was() -> None:
    model = scalar_mlp("resmlp", depth=6, width=16)
    model.train()
    model.body.block0.eval()
    modes = [m.training for m in model.modules()]
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    shattering(model)
    assert [m.training for m in model.modules()] == modes
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name]), name
    assert all(p.grad is None for p in model.parameters())
    assert no_hooks_left(model)


def test_deep_plain_gradients_are_white_noise_and_residual_ones_are_not() -> None:
    """Balduzzi et al.'s Fig. 1 at width 200: a 24-layer plain net vs 50 residual blocks.

    Measured lag-1 autocorrelation, seeds 0..19: plain-24 mean -0.006 (sd 0.059, range -0.10..0.15;
    white noise has sd 1/sqrt(256) = 0.0625); residual-50 mean 0.53 (sd 0.08, range 0.39..0.66).
    Spectral flatness: plain 0.58 (white noise 0.56), residual 0.40.
    """
    plain, residual = [], []
    for seed in range(4):
        torch.manual_seed(seed)
        plain.append(shattering(scalar_mlp("mlp", depth=24)))
        torch.manual_seed(seed)
        residual.append(shattering(scalar_mlp("resmlp", depth=2 * 50 + 2)))
    plain_lag1 = statistics.mean(r.lag1 for r in plain)
    residual_lag1 = statistics.mean(r.lag1 for r in residual)
    assert abs(plain_lag1) < 0.15
    assert residual_lag1 > 0.3
    assert statistics.mean(r.spectral_flatness for r in plain) > 0.48
    assert statistics.mean(r.spectral_flatness for r in residual) < 0.5


def test_shallow_network_gradient_is_smooth() -> None:
    result = shattering(scalar_mlp("mlp", depth=2))
    assert result.lag1 > 0.9 and result.correlation_length() > 20


def test_rejects_networks_without_one_scalar_output_per_point() -> None:
    with pytest.raises(ValueError, match="one scalar output per point"):
        shattering(scalar_mlp("mlp", depth=4, width=8, num_classes=3))
    with pytest.raises(ValueError, match="n_points"):
        shattering(scalar_mlp("mlp", depth=4, width=8), n_points=1)


def test_batch_norm_without_running_statistics_is_rejected() -> None:
    norm = nn.BatchNorm1d(4, track_running_stats=False)
    model = nn.Sequential(nn.Linear(1, 4), norm, nn.Linear(4, 1))
    with pytest.raises(ValueError, match="track_running_stats"):
        shattering(model)


def test_cli_prints_lag1_table_and_writes_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "shattering.png"
    argv = ["shattering", "--depths", "2,4", "--blocks", "1", "--width", "16", "--points", "64"]
    assert main([*argv, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "plain, 4 layers" in printed and "residual, 1 blocks" in printed and "lag-1" in printed
    assert out.stat().st_size > 0


@pytest.mark.parametrize(
    "option, value", [("--depths", "3"), ("--depths", "a,b"), ("--blocks", "0")]
)
def test_cli_rejects_bad_depths_with_exit_status_2(
    option: str, value: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["shattering", option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradsight: error:") and len(err.strip().splitlines()) == 1
