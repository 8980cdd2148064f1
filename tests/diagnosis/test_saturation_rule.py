"""The doctor on saturated bounded activations: every weight x10 in a tanh MLP puts most of its units
where the slope is under 2 % of its largest, while its gradient's depth profile stays flat (the chaotic
phase: it grows toward the input); the finding is ``vanishing_gradients`` through saturated units. Not
said of a default-initialized tanh MLP, of a saturated output activation (a generator's tanh) or of a
saturated gate (squeeze-excite), which feed no layer."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import gradsight as gs
from gradsight.diagnosis import measure
from gradsight.store.view import RunView


def _tanh_mlp(scale: float) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                          nn.Linear(64, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def _saturation(findings):
    return [f for f in findings if f.message.startswith("Saturated activations")]


def test_tanh_mlp_with_weights_x10_is_saturated(tmp_path):
    findings = gs.checkup(_tanh_mlp(10.0), input_shape=(64,), steps=20, run_dir=tmp_path / "run")
    (found,) = _saturation(findings)
    assert found.code == "vanishing_gradients" and str(found.severity) == "warning"
    assert found.measured["saturated_frac"] > 0.5
    assert {"1", "3", "5"} & set(found.layers)
    stats = measure(RunView(tmp_path / "run"))
    assert stats["saturated_max"] == found.measured["saturated_frac"]
    # the depth profile alone says nothing: the gradient does not shrink toward the input
    assert stats["grad_depth_log10_min"] > -1


def test_default_tanh_mlp_is_not(tmp_path):
    findings = gs.checkup(_tanh_mlp(1.0), input_shape=(64,), steps=20, run_dir=tmp_path / "run")
    assert not _saturation(findings)
    assert measure(RunView(tmp_path / "run"))["saturated_max"] < 0.05


class _Generator(nn.Module):
    """An image generator whose output tanh saturates (its targets sit at -1 and 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64))
        self.out = nn.Tanh()
        with torch.no_grad():
            self.body[2].weight.mul_(30)

    def forward(self, z):
        return self.out(self.body(z))


class _Gated(nn.Module):
    """Squeeze-excite style gates whose sigmoid saturates."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 32)
        self.squeeze = nn.Linear(32, 32)
        self.gate = nn.Sigmoid()
        self.head = nn.Linear(32, 10)
        with torch.no_grad():
            self.squeeze.weight.mul_(50)

    def forward(self, x):
        h = F.relu(self.fc(x))
        return self.head(h * self.gate(self.squeeze(h)))


def test_saturated_outputs_and_gates_are_not_judged(tmp_path):
    torch.manual_seed(0)
    target = torch.randn(32, 64).sign()
    gen = gs.checkup(_Generator(), inputs=torch.randn(32, 16), targets=target, loss_fn=F.mse_loss, steps=10,
                     run_dir=tmp_path / "gen")
    gated = gs.checkup(_Gated(), input_shape=(32,), steps=10, run_dir=tmp_path / "gated")
    assert not _saturation(gen) and not _saturation(gated)
    for run in ("gen", "gated"):
        view = RunView(tmp_path / run)
        assert [link["feeds"] for link in view.meta["saturation_links"].values()] == [None]
        assert max(view.matrix("module", "act_saturated").iloc[-1]) > 0.5  # saturated, and rightly not judged


def test_saturation_that_training_brings_is_info(tmp_path):
    """SGD at lr 5 drives a default-initialized tanh MLP into saturation after a few steps: told as
    ``saturated_units`` (info; a generator's output watched with its discriminator gets there by
    design), never as a warning; the statistic (saturated at the start and in the window) stays low."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    with gs.watch(model, tmp_path / "run", optimizer=opt, activations=True) as mon:
        for _ in range(20):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            mon.step(loss)
            opt.step()
    view = RunView(tmp_path / "run")
    shares = view.matrix("module", "act_saturated")
    assert shares.iloc[0].max() < 0.05 and shares.iloc[10:].median().max() > 0.5  # the case is what it says
    findings = gs.diagnose(view)
    assert not _saturation(findings)
    (late,) = [f for f in findings if f.code == "saturated_units"]
    assert str(late.severity) == "info" and late.measured["saturated_frac"] > 0.5
    assert measure(view)["saturated_max"] < 0.05
