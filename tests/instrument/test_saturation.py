"""``act_saturated``: the share of a bounded activation's outputs where its slope is under 2 % of its
largest, recorded on the row of the layer whose output it takes, against the slope that autograd
gives for each element in float64; and ``meta.saturation_links``: which activation follows which
layer and which layer it feeds (none for an output activation or a gate that multiplies)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.instrument.activations import SATURATED_SLOPE, saturation_band
from gradsight.store.schema import Level
from gradsight.store.view import RunView

#: each bounded activation and its largest slope
BOUNDED = [(nn.Tanh(), 1.0), (nn.Sigmoid(), 0.25), (nn.Softsign(), 1.0), (nn.Hardtanh(-2.0, 3.0), 1.0),
           (nn.Hardsigmoid(), 1 / 6)]


def _slope_share(activation: nn.Module, largest: float, z: torch.Tensor) -> float:
    """Share of elements whose slope (autograd, float64) is under SATURATED_SLOPE of the largest."""
    z = z.detach().double().requires_grad_(True)
    (slope,) = torch.autograd.grad(activation(z).sum(), z)
    return float((slope < SATURATED_SLOPE * largest).double().mean())


def _chain(scale: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for activation, _ in BOUNDED:
        layers += [nn.Linear(16, 16), activation]
    layers.append(nn.Linear(16, 3))
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(scale)
    return model


@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_saturated_share_matches_the_float64_slope(tmp_path, scale):
    torch.manual_seed(0)
    model = _chain(scale)
    xs = [torch.randn(24, 16) * 2, torch.randn(40, 16)]  # two micro-batches: the counts pool
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        for x in xs:
            model(x).pow(2).mean().backward()
        mon.step()
    inputs: dict[str, list[torch.Tensor]] = {}
    handles = [m.register_forward_hook(lambda mod, a, out, n=n: inputs.setdefault(n, []).append(a[0]))
               for n, m in model.named_modules() if saturation_band(m) is not None]
    with torch.no_grad():
        for x in xs:
            model(x)
    for h in handles:
        h.remove()
    view = RunView(tmp_path / "run")
    got = view.matrix(Level.MODULE, "act_saturated").iloc[0]
    links = view.meta["saturation_links"]
    assert sorted(links, key=int) == [str(2 * i) for i in range(len(BOUNDED))]
    shares = []
    for i, (activation, largest) in enumerate(BOUNDED):
        layer, act = str(2 * i), str(2 * i + 1)
        assert links[layer] == {"activation": act, "type": type(activation).__name__, "feeds": str(2 * i + 2)}
        want = _slope_share(activation, largest, torch.cat(inputs[act]))
        assert got[layer] == pytest.approx(want, abs=1.5 / 64 / 16), (type(activation).__name__, got[layer], want)
        shares.append(want)
    if scale > 1:
        assert sorted(shares)[1] > 0.2  # the test measures something (softsign saturates only past |z| = 6)
    else:
        assert max(shares[:3]) < 0.05


def test_links_leave_out_gates_outputs_and_relu6(tmp_path):
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.gate_fc = nn.Linear(8, 8)
            self.gate = nn.Sigmoid()  # squeeze-excite style: multiplies, feeds no layer
            self.act = nn.Tanh()
            self.mixed = nn.Tanh()  # takes a sum: no layer's output as it is, not measured
            self.relu6 = nn.ReLU6()
            self.head = nn.Linear(8, 8)
            self.out = nn.Tanh()  # an output activation

        def forward(self, x):
            h = self.fc(x) * self.gate(self.gate_fc(x))
            h = self.relu6(self.head(self.mixed(h + x)))
            return self.out(self.head(self.act(self.fc(h))))

    torch.manual_seed(0)
    model = Gated()
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        for _ in range(2):
            model(torch.randn(4, 8)).sum().backward()
            mon.step()
    view = RunView(tmp_path / "run")
    links = view.meta["saturation_links"]
    assert links == {"gate_fc": {"activation": "gate", "type": "Sigmoid", "feeds": None},
                     "fc": {"activation": "act", "type": "Tanh", "feeds": "head"},
                     "head": {"activation": "out", "type": "Tanh", "feeds": None}}
    assert set(view.matrix(Level.MODULE, "act_saturated").columns) == {"gate_fc", "fc", "head"}


def test_no_saturation_without_activation_statistics(tmp_path):
    model = _chain(1.0)
    with gs.watch(model, tmp_path / "run") as mon:
        model(torch.randn(4, 16)).sum().backward()
        mon.step()
    view = RunView(tmp_path / "run")
    assert "saturation_links" not in view.meta
    assert "act_saturated" not in view.stats(Level.MODULE)


def test_one_activation_module_after_several_layers(tmp_path):
    """``self.act`` applied after two layers: each layer's row holds its own call's share."""

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.head = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 3)
            self.act = nn.Tanh()
            with torch.no_grad():
                self.fc1.weight.mul_(10)  # saturates; fc2 does not

        def forward(self, x):
            return self.head(self.act(self.fc2(self.act(self.fc1(x)))))

    torch.manual_seed(0)
    model = Shared()
    x = torch.randn(32, 16)
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(x).sum().backward()
        mon.step()
    view = RunView(tmp_path / "run")
    assert view.meta["saturation_links"] == {"fc1": {"activation": "act", "type": "Tanh", "feeds": "fc2"},
                                             "fc2": {"activation": "act", "type": "Tanh", "feeds": "head"}}
    got = view.matrix(Level.MODULE, "act_saturated").iloc[0]
    z1 = model.fc1(x)
    z2 = model.fc2(torch.tanh(z1))
    for layer, z in (("fc1", z1), ("fc2", z2)):
        assert got[layer] == pytest.approx(_slope_share(nn.Tanh(), 1.0, z), abs=1.5 / z.numel())
    assert got["fc1"] > 0.3 > got["fc2"]


def test_probe_reports_saturation_at_initialization():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight.mul_(20)
    x = torch.randn(64, 8)
    table = gs.probe(model, x).set_index("name")
    want = _slope_share(nn.Tanh(), 1.0, model[0](x))
    assert table.loc["0", "act_saturated"] == pytest.approx(want, abs=1.5 / 512) and want > 0.5
    assert table["act_saturated"].isna().sum() == 1  # the head feeds no bounded activation
