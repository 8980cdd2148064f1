"""Complex parameters through ``gs.watch``: every statistic of every parameter, layer and the
model against complex128 recomputations from ``.grad`` (``|g|`` the modulus), ``update_ratio``
against complex128 copies around ``optimizer.step()``, and the headroom fractions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradsight as gs


class Spectral(nn.Module):
    """A complex filter (``n`` elements) and a complex mixing matrix, then a real readout."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.filter = nn.Parameter(torch.randn(n, dtype=torch.complex64))
        self.mix = nn.Linear(8, 8, dtype=torch.complex64)
        self.readout = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.fft.fft(x, n=self.filter.numel()) * self.filter
        z = self.mix(z[:, :8])
        return self.readout(torch.view_as_real(z).flatten(1))


def reference(tensors: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Statistics of several (gradient, weight) pairs, in complex128."""
    g = torch.cat([t.detach().to(torch.complex128).reshape(-1) for t, _ in tensors])
    w = torch.cat([t.detach().to(torch.complex128).reshape(-1) for _, t in tensors])
    mod = g.abs()
    norm = math.sqrt(float((mod**2).sum()))
    wnorm = math.sqrt(float((w.abs() ** 2).sum()))
    return {"grad_norm": norm, "grad_rms": norm / math.sqrt(g.numel()), "grad_abs_mean": float(mod.mean()),
            "grad_abs_max": float(mod.max()), "grad_zero_frac": float((g == 0).sum()) / g.numel(),
            "grad_nonfinite": 0.0, "weight_norm": wnorm, "grad_weight_ratio": norm / wnorm}


@pytest.mark.parametrize("n", [16, 1 << 16])
def test_complex_parameters_are_recorded_exactly(tmp_path, n):
    """Regression: monitor.step() raised on small complex tensors; at 65,536 elements the
    compiled kernel dropped the imaginary part (grad_norm 36 % low); with optimizer=,
    optimizer.step() raised inside the update-ratio hook."""
    torch.manual_seed(0)
    model = Spectral(n)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=True, histograms=True) as mon:
        model(torch.randn(4, 32)).pow(2).mean().backward()
        model.filter.grad[:3] = 0  # zero in both parts
        model.filter.grad[3] = complex(0.0, 1.0)  # not zero
        model.filter.grad[4] = complex(2.0**-26, -(2.0**-27))  # both parts round to 0 in fp16: underflows
        model.filter.grad[5] = complex(2.0**-26, 1e-3)  # one part survives: does not
        params = dict(model.named_parameters())
        want = {("param", name): reference([(p.grad, p)]) for name, p in params.items()}
        want[("layer", "mix")] = reference([(params["mix.weight"].grad, params["mix.weight"]),
                                            (params["mix.bias"].grad, params["mix.bias"])])
        want[("model", "")] = reference([(p.grad, p) for p in params.values()])
        underflow = {name: float(((torch.view_as_real(p.grad) if p.is_complex() else p.grad[..., None])
                                  .to(torch.float16) == 0).all(-1).logical_and(p.grad != 0).sum()) / p.numel()
                     for name, p in params.items()}
        mon.step()
        before = {name: p.detach().to(torch.complex128).clone() for name, p in params.items()}
        opt.step()
        after = {name: p.detach().to(torch.complex128) for name, p in params.items()}
    frame = gs.open_run(tmp_path / "run").frame()
    got = {(r.level, r.name, r.stat): r.value for r in frame.itertuples()}
    for (level, name), stats in want.items():
        for stat, value in stats.items():
            assert math.isclose(got[(level, name, stat)], value, rel_tol=2e-6, abs_tol=1e-12), (
                level, name, stat, got[(level, name, stat)], value)
    for name in params:
        ratio = float((after[name] - before[name]).abs().pow(2).sum().sqrt() / before[name].abs().pow(2).sum().sqrt())
        assert abs(got[("param", name, "update_ratio")] - ratio) <= 1e-6 * ratio, name
        assert got[("param", name, "fp16_underflow")] == pytest.approx(underflow[name], abs=1e-12), name
    assert underflow["filter"] == 1 / n
