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


class _Makemore(nn.Module):
    """The character MLP of Karpathy's makemore lecture on activations (part 3): a 27 x 10 embedding of
    3 characters, W1 (30 x 200) and b1 drawn from N(0, 1), tanh, W2 scaled by 0.01 (its fix of the initial
    loss). The lecture then shows most of the tanh outputs at +-1 and fixes it by scaling W1 (0.2, then
    Kaiming's 5/3 / sqrt(fan_in)) and b1 (0.01)."""

    def __init__(self, w1_scale: float) -> None:
        super().__init__()
        self.embed, self.l1, self.act, self.l2 = nn.Embedding(27, 10), nn.Linear(30, 200), nn.Tanh(), nn.Linear(200, 27)
        with torch.no_grad():
            for p in (self.embed.weight, self.l1.weight, self.l1.bias, self.l2.weight):
                nn.init.normal_(p)
            self.l1.weight.mul_(w1_scale)
            self.l1.bias.mul_(1.0 if w1_scale == 1.0 else 0.01)
            self.l2.weight.mul_(0.01)
            self.l2.bias.zero_()

    def forward(self, x):
        return self.l2(self.act(self.l1(self.embed(x).flatten(1))))


def test_makemore_before_and_after_the_lectures_fix(tmp_path):
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 27, (32, 3), generator=gen), torch.randint(0, 27, (32,), generator=gen)
    verdicts = {}
    for scale in (1.0, 0.2, 5 / 3 / 30 ** 0.5):
        torch.manual_seed(0)
        findings = gs.checkup(_Makemore(scale), inputs=x, targets=y, loss_fn=F.cross_entropy, steps=20)
        verdicts[scale] = [f for f in findings if str(f.severity) != "info"]
    (before,) = verdicts[1.0]
    assert before.code == "vanishing_gradients" and before.message.startswith("Saturated activations")
    assert before.measured["saturated_frac"] > 0.5 and before.layers == ["act", "l1"]
    assert verdicts[0.2] == [] and verdicts[5 / 3 / 30 ** 0.5] == []
