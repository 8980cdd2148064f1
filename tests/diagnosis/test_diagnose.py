"""Diagnosis verdicts on networks whose behaviour theory predicts, and on injected faults."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.cli import main
from gradsight.diagnosis import Severity, Thresholds, UnhealthyGradientsError, checkup
from gradsight.store.query import layer_matrix
from gradsight.store.view import RunView


def codes(findings, severity=None):
    return {f.code for f in findings if severity is None or f.severity == severity}


def test_deep_plain_sigmoid_mlp_vanishes():
    torch.manual_seed(0)
    model = gs.models.create_model("mlp", depth=20, width=128, activation="sigmoid", init="xavier")
    findings = checkup(model, input_shape=(784,), steps=3)
    (f,) = [f for f in findings if f.code == "vanishing_gradients"]
    assert f.severity == "error"  # ~1e-12 from last to first layer
    # like with like: each block's layers against themselves in the other blocks (stem and head are unlike)
    assert f.layers == ["body.block0", "body.block8"] and f.measured["depth"] == 8
    assert f.measured["gain_per_step_back"] < 0.5  # the gain per block


def test_plain_relu_mlp_lecun_init_vanishes():
    """Backward gain sqrt(1/2) per layer (N(0, 1/fan_in) weights, ReLU): ~1e-3 over 20 layers."""
    torch.manual_seed(0)
    model = gs.models.create_model("mlp20_lecun_nobias")
    findings = checkup(model, input_shape=(784,), steps=1)
    (f,) = [f for f in findings if f.code == "vanishing_gradients"]
    # like with like: per repeated block of two layers, each compared with itself in the next block
    assert 0.65 < f.measured["gain_per_step_back"] ** (1 / 2) < 0.76


class _PostSiLUBlock(nn.Module):
    """A bottleneck-free ResNet block with its activation after the addition (timm's
    ResNet-51Q uses SiLU there) and its last BatchNorm scale at zero (``zero_init_last``)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x):
        return nn.functional.silu(x + self.bn2(self.conv2(nn.functional.silu(self.bn1(self.conv1(x))))))


def _findings(code, model, run_dir, batch, opt=None, steps=5):
    """Train ``model`` on ``batch(generator)`` for ``steps`` recorded steps (SGD with momentum
    unless ``opt``), with activation statistics; the findings of ``code``."""
    gen = torch.Generator().manual_seed(0)
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with gs.watch(model, run_dir, optimizer=opt, activations=True) as mon:
        for _ in range(steps):
            x, y = batch(gen)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            mon.step(loss)
            opt.step()
            opt.zero_grad()
    return [f for f in gs.diagnose(run_dir) if f.code == code]


def _fading(model, run_dir, batch):
    return _findings("vanishing_gradients", model, run_dir, batch)


def test_a_gain_per_block_near_a_silu_slope_is_healthy_and_a_lower_one_fades(tmp_path):
    """A SiLU after each addition multiplies the stream's gradient by its slope near 0 (0.5)
    while the branches start at zero: ten such blocks lose 11x (measured with backward hooks
    in float64), 0.71-0.73 per block like with like, as stock ResNet-51Q (0.725) does, which
    trains to its published accuracy: no finding (the 0.75 this gain was held to before
    flagged it). Ten tanh layers whose weights are an orthogonal map x0.5 lose 0.5 per layer
    (200x, short of the 1e3 the total needs): the gain says it."""
    torch.manual_seed(0)
    c = 16
    model = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.SiLU(),
                          *[_PostSiLUBlock(c) for _ in range(10)], nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(c, 10))
    grad_rms = {}

    def keep(i):
        def hook(_module, _grad_in, grad_out):
            grad_rms.setdefault(i, float(grad_out[0].double().pow(2).mean().sqrt()))  # the first step's
        return hook

    for i in (3, 12):
        model[i].register_full_backward_hook(keep(i))
    images = lambda gen: (torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen))  # noqa: E731
    assert _fading(model, tmp_path / "silu", images) == []
    assert 5 < grad_rms[12] / grad_rms[3] < 30
    with RunView(tmp_path / "silu") as view:
        from gradsight.diagnosis.rules import depth_profiles
        assert min(d.gain for d in depth_profiles(view)) < 0.75

    torch.manual_seed(0)
    layers = []
    for _ in range(10):
        linear = nn.Linear(32, 32)
        nn.init.orthogonal_(linear.weight, gain=0.5)
        layers += [linear, nn.Tanh()]
    mlp = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), *layers, nn.Linear(32, 10))
    vectors = lambda gen: (torch.randn(64, 8, generator=gen), torch.randint(0, 10, (64,), generator=gen))  # noqa: E731
    (f,) = _fading(mlp, tmp_path / "tanh", vectors)
    assert f.measured["gain_per_step_back"] < Thresholds().gain_low
    assert f.measured["first_over_last"] > 1 / Thresholds().vanish_ratio


def test_gradients_whose_squares_underflow_are_a_cut_not_silence(tmp_path):
    """BatchNorm weights drawn from N(0, 0.02) with eps 1e-3 (as transformers 5.25 builds its
    EfficientNet): each BatchNorm's input variance falls below its eps, so it no longer
    renormalizes, and each of 24 layers scales the signal down, forward and back: the stem's
    gradient is below 1e-19, nonzero (checked on the model) but below 1.1e-19, whose
    square float32 holds as 0, so Adam's second moment of it is 0. Recorded exactly (not as
    0), it is still the gradient stopping: an error that gives the largest element."""
    from gradsight.diagnosis.rules import FLOAT32_SQUARE_FLOOR

    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1)]
    for _ in range(24):
        bn = nn.BatchNorm2d(8, eps=1e-3)
        nn.init.normal_(bn.weight, std=0.02)
        layers += [bn, nn.SiLU(), nn.Conv2d(8, 8, 3, padding=1)]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with gs.watch(model, tmp_path / "run", optimizer=opt, activations=True) as mon:
        for _ in range(6):
            x, y = torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)
            nn.functional.cross_entropy(model(x), y).backward()
            stem = model[0].weight.grad.abs().max().item()
            assert 0 < stem < FLOAT32_SQUARE_FLOOR
            mon.step()
            opt.step()
            opt.zero_grad()
    with gs.open_run(tmp_path / "run") as run:
        recorded = run.series("grad_abs_max", "layer")["0"].iloc[-1]
    assert recorded == pytest.approx(stem, rel=1e-6)
    (f,) = [f for f in gs.diagnose(tmp_path / "run") if f.code == "vanishing_gradients"]
    assert f.severity == "error" and "no gradient an optimizer can use" in f.message
    assert 0 < f.measured["largest_element"] < FLOAT32_SQUARE_FLOOR


def test_unnormalized_resnet_with_he_init_explodes_forward():
    """Each He-initialized branch adds the stream's variance again: the stream doubles its
    variance per block (De & Smith 2020), 2^4 in RMS over a stage of 9 blocks against the
    sqrt(9) that blocks adding branches of constant variance allow."""
    torch.manual_seed(0)
    model = gs.models.create_model("resnet56", in_channels=1, norm="none", init="he")
    findings = checkup(model, input_shape=(1, 28, 28), steps=2, batch_size=16)
    (f,) = [f for f in findings if f.code == "exploding_forward"]
    assert f.measured["last_over_first_rms"] > 100
    assert f.measured["stream_log10_excess"] > 1  # beyond sqrt(blocks), like with like, summed over the stages
    assert 0 in f.steps
    # an error: each module's own output grows 1e3x or more, like with like
    assert f.severity == "error" and f.measured["layer_log10_growth"] > 3


class _DoubledSkip(nn.Module):
    """``2 x + f(LayerNorm(x))``: a skip scaled by 2, a pre-LN branch of constant scale."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(width), nn.Linear(width, width)

    def forward(self, x):
        return 2 * x + self.fc(self.norm(x))


class _BiasedBranch(nn.Module):
    """``x + fc(LayerNorm(x))`` with the branch's bias at 1 and its weights at 1e-6: the
    branch adds a per-channel mean of 1, and almost no spread, to a stream that starts far
    below it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(width), nn.Linear(width, width)
        nn.init.normal_(self.fc.weight, std=1e-6)
        nn.init.constant_(self.fc.bias, 1.0)

    def forward(self, x):
        return x + self.fc(self.norm(x))


def test_the_streams_allowance_counts_what_a_branchs_mean_adds(tmp_path):
    """A stream of RMS 1e-4 entering 8 blocks whose branches add a per-channel mean of 1
    grows about 3e4x by additions alone (MobileViTV2's stages, whose branches' biases grow):
    the allowance takes the first branch's second moment, ``branch_var + branch_mean_sq``
    (its mean square, checked against the branch output in float64), and finds nothing; the
    variance alone (the within-channel spread, 1e-11 here) allowed sqrt(8) of it, and read
    the rest, 4e4x, as the stream exploding."""
    from gradsight.diagnosis.rules import _branch_second_moment, forward_growth

    torch.manual_seed(0)
    blocks = [_BiasedBranch(16) for _ in range(8)]
    model = nn.Sequential(nn.Linear(8, 16), *blocks, nn.LayerNorm(16), nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight.mul_(1e-4)
        model[0].bias.zero_()
    branch_out = {}

    def keep(_module, _args, out):
        branch_out.setdefault("first", out.detach().double())

    blocks[0].fc.register_forward_hook(keep)
    gen = torch.Generator().manual_seed(0)
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        x, y = torch.randn(64, 8, generator=gen), torch.randint(0, 4, (64,), generator=gen)
        nn.functional.cross_entropy(model(x), y).backward()
        mon.step()
    with RunView(tmp_path / "run") as view:
        second = float(_branch_second_moment(view)["1"].iloc[0])
        _layer, stream, _ends, _steps = forward_growth(view)
    assert second == pytest.approx(float(branch_out["first"].pow(2).mean()), rel=1e-4)
    assert stream < 0.5
    assert not [f for f in gs.diagnose(tmp_path / "run") if f.code == "exploding_forward"]


def test_a_stream_growing_alone_is_a_warning_not_an_error(tmp_path):
    """24 blocks whose skip doubles the stream (1.7e7x) while every module's output stays
    the same (LayerNorm before each branch): the stream's growth beyond what additions allow
    is reported, as a warning. The stream's allowance is a model (branches of the first
    block's variance, within channels) that a branch's per-channel mean escapes (stock
    MobileViTV2 read 2.9e5x "beyond" it), and it caught no fault alone: an error needs each
    module's own output to grow."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), *[_DoubledSkip(16) for _ in range(24)], nn.LayerNorm(16), nn.Linear(16, 4))
    vectors = lambda gen: (torch.randn(32, 8, generator=gen), torch.randint(0, 4, (32,), generator=gen))  # noqa: E731
    (f,) = _findings("exploding_forward", model, tmp_path / "run", vectors,
                     opt=torch.optim.Adam(model.parameters(), lr=1e-4))
    assert f.severity == "warning" and "residual stream" in f.message
    assert f.measured["stream_log10_excess"] > 6  # an error before, by the stream alone
    assert f.measured["layer_log10_growth"] < 1


def test_healthy_batchnorm_resnet20_has_no_error():
    torch.manual_seed(0)
    model = gs.models.create_model("resnet20", in_channels=1)
    findings = checkup(model, input_shape=(1, 28, 28), steps=5, batch_size=16)
    assert not codes(findings, "error"), gs.format_findings(findings)
    assert "vanishing_gradients" not in codes(findings)


class NaNForward(nn.Linear):
    """A linear layer whose output turns NaN (or Inf) from a given call on."""

    def __init__(self, *args, at_call: int, value: float = float("nan"), **kw):
        super().__init__(*args, **kw)
        self.calls, self.at_call, self.value = 0, at_call, value

    def forward(self, x):
        out = super().forward(x)
        self.calls += 1
        if self.calls > self.at_call:
            out = out.clone()
            out[0, 0] = self.value
        return out


class _PoisonGrad(torch.autograd.Function):
    value = float("nan")

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        grad[0, 0] = _PoisonGrad.value
        return grad


class NaNBackward(nn.Linear):
    """A linear layer that passes a NaN (or Inf) gradient back to its input."""

    def __init__(self, *args, armed: bool = True, **kw):
        super().__init__(*args, **kw)
        self.armed = armed

    def forward(self, x):
        return super().forward(_PoisonGrad.apply(x) if self.armed else x)


def _net(middle: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), middle, nn.ReLU(),
                         nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def _train(model, run_dir, steps=4):
    with gs.watch(model, run_dir, activations=True) as mon:
        for _ in range(steps):
            model(torch.randn(5, 8)).pow(2).mean().backward()
            mon.step()
            model.zero_grad()
    return gs.diagnose(run_dir)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_forward_origin(tmp_path, value):
    findings = _train(_net(NaNForward(16, 16, at_call=2, value=value)), tmp_path / "run")
    (f,) = [f for f in findings if f.code == "nonfinite"]
    assert f.severity == "error"
    assert f.measured["first_step"] == 2
    assert "output of '4'" in f.message
    assert f.layers[0] == "4"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_backward_origin(tmp_path, value, monkeypatch):
    monkeypatch.setattr(_PoisonGrad, "value", value)
    findings = _train(_net(NaNBackward(16, 16)), tmp_path / "run", steps=2)
    (f,) = [f for f in findings if f.code == "nonfinite"]
    assert f.measured["first_step"] == 0
    assert "backward pass they first appear in '4'" in f.message
    assert "forward" not in f.message
    assert f.layers == ["4"]


def test_nonfinite_backward_origin_from_parameter_gradients_only(tmp_path):
    model = _net(NaNBackward(16, 16))
    with gs.watch(model, tmp_path / "run") as mon:  # no activation statistics
        model(torch.randn(5, 8)).pow(2).mean().backward()
        mon.step()
    (f,) = [f for f in gs.diagnose(tmp_path / "run") if f.code == "nonfinite"]
    assert "'4'" in f.message


def test_dead_units_missing_gradients_and_update_ratio(tmp_path):
    torch.manual_seed(0)
    model = nn.ModuleDict({"body": nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                                 nn.Linear(32, 2)), "unused": nn.Linear(3, 3)})
    nn.init.constant_(model["body"][2].bias, -100.0)  # every unit after layer 2 is dead
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=True) as mon:
        for _ in range(10):  # update ratios are judged from the 5th update of the window on
            model["body"](torch.randn(16, 8)).pow(2).mean().backward()
            mon.step()
            opt.step()
            opt.zero_grad()
    found = {f.code: f for f in gs.diagnose(tmp_path / "run")}
    assert "body.4" in found["dead_units"].layers
    assert sorted(found["no_gradient"].layers) == ["unused.bias", "unused.weight"]
    assert "'unused'" in found["no_gradient"].message  # names the module, as the user wrote it
    assert "update_ratio_high" in found


class _Scalar(nn.Module):
    """A learned scalar scale initialized at 1 (StarReLU's, a norm's gain): under Adam it moves
    by about lr per step, a relative update of lr whatever the network learns."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * x


@pytest.mark.parametrize(("lr", "low"), [(5e-6, False), (5e-9, True)])
def test_the_networks_update_ratio_is_its_weighted_layers(tmp_path, lr, low):
    """A network whose learned scalars outnumber its linear maps (MetaFormers: StarReLU scalars,
    norm gains) is too slow only when its linear maps are: at lr 5e-6 the scalars change by
    about 5e-6 per step, below ``update_low``, while the linear maps change by 2.5e-5; at 5e-9
    every layer is too slow."""
    torch.manual_seed(0)
    layers = []
    for fan_in, fan_out in ((16, 64), (64, 64), (64, 4)):
        layers += [nn.Linear(fan_in, fan_out), *(_Scalar() for _ in range(3))]
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=True) as mon:
        for _ in range(20):
            model(torch.randn(32, 16)).pow(2).mean().backward()
            mon.step()
            opt.step()
            opt.zero_grad()
    from gradsight.diagnosis.rules import network_update, update_sizes

    with RunView(tmp_path / "run") as view:
        _, per_layer = update_sizes(view, Thresholds())
        median, counted = network_update(view, per_layer)
    assert counted == 3 and (median < Thresholds().update_low) == low
    if not low:
        assert float(per_layer.median()) < Thresholds().update_low  # the scalars alone would have decided
    found = [f for f in gs.diagnose(tmp_path / "run") if f.code == "update_ratio_low"]
    assert any(f.severity == "warning" for f in found) == low


def test_update_ratio_judged_from_rotating_snapshots_where_each_layer_has_some_steps(tmp_path, monkeypatch):
    """With the snapshot cut into chunks of layers (each layer's ``update_ratio`` at one measured
    step in three), each layer is judged from its own updates: a step without one is neither 0
    nor a value."""
    from gradsight.instrument import update_ratio as ur

    monkeypatch.setattr(ur, "SNAPSHOT_FLOOR_BYTES", 0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=True) as mon:
        assert mon._updates.n_chunks == 3
        for _ in range(30):
            model(torch.randn(16, 8)).pow(2).mean().backward()
            mon.step()
            opt.step()
            opt.zero_grad()
    table = layer_matrix(tmp_path / "run", "update_ratio", max_steps=None)
    assert (table.notna().sum(axis=1) == 1).all()  # one layer a step
    (f,) = [f for f in gs.diagnose(tmp_path / "run", Thresholds(update_high=1e-3)) if f.code == "update_ratio_high"]
    assert "in the last 5 recorded updates" in f.message  # each layer's own 5 of the window's 15 steps
    window = table.iloc[15:]
    assert f.measured == pytest.approx({name: float(window[name].dropna().median()) for name in table.columns})
    # a view sampling 11 of the 30 steps (0, 3, 6, 9, 12, 14, 17, ..., 29: none of layer 2's)
    # still judges every layer: update ratios are read at every step that holds one
    view = RunView(tmp_path / "run", max_steps=11)
    assert not set(view.sample) & set(range(1, 30, 3))
    (g,) = [f for f in gs.diagnose(view, Thresholds(update_high=1e-3)) if f.code == "update_ratio_high"]
    assert g.measured == pytest.approx(f.measured)


def test_checkup_records_every_layers_update_ratio_at_every_step_for_weights_over_16_mib(tmp_path):
    """The doctor's thresholds were calibrated on update ratios of every layer at every step:
    the model check records them so (``update_ratio="whole"``) where ``gs.watch``'s default
    would rotate chunks of layers (here 24 MiB of weights: two chunks)."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(1024, 1024), nn.ReLU()) for _ in range(6)], nn.Linear(1024, 10))
    assert sum(p.numel() * 4 for p in model.parameters()) > 16 * 2**20
    checkup(model, input_shape=(1024,), steps=6, batch_size=4, run_dir=tmp_path / "run")
    table = layer_matrix(tmp_path / "run", "update_ratio", max_steps=None)
    assert table.shape == (6, 7) and table.notna().all().all()
    assert table.gt(0).all().all()
    model_rows = gs.open_run(tmp_path / "run").frame(stat="update_ratio", level="model")
    assert len(model_rows) == 6


def test_too_few_update_ratios_in_a_long_enough_window_are_said_not_left_silent(tmp_path, monkeypatch):
    """Rotating snapshots (three chunks) leave each layer 2 update ratios in a 6-step window,
    under ``min_updates``: the update rules are not judged, and an info finding says so and
    why; the same run recorded with ``update_ratio="whole"`` is judged."""
    from gradsight.instrument import update_ratio as ur

    monkeypatch.setattr(ur, "SNAPSHOT_FLOOR_BYTES", 0)
    for option in (True, "whole"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        with gs.watch(model, tmp_path / str(option), optimizer=opt, update_ratio=option) as mon:
            for _ in range(12):
                model(torch.randn(16, 8)).pow(2).mean().backward()
                mon.step()
                opt.step()
                opt.zero_grad()
        found = {f.code: f for f in gs.diagnose(tmp_path / str(option), Thresholds(update_high=1e-3))}
        if option is True:
            assert "update_ratio_high" not in found
            f = found["update_ratio_unjudged"]
            assert f.severity == "info"
            assert f.measured == {"updates_per_layer": 2.0, "needed": 5.0, "window_steps": 6.0}
            assert "update_ratio_high" in f.message and "update_ratio=True" in f.message
        else:
            assert "update_ratio_unjudged" not in found and "update_ratio_high" in found


def test_a_run_too_short_for_update_verdicts_gets_no_unjudged_note(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=True) as mon:
        for _ in range(6):  # a 3-step window: too short whatever was recorded
            model(torch.randn(16, 8)).pow(2).mean().backward()
            mon.step()
            opt.step()
            opt.zero_grad()
    assert "update_ratio_unjudged" not in codes(gs.diagnose(tmp_path / "run"))


def test_fixup_branches_start_idle_by_design(tmp_path):
    """Fixup zero-initializes each branch's last layer: its branches carry no gradient at
    initialization, as designed; an info, not a warning (the scale is recognized from the
    parameters). The same blocks with the branch multiplied by a constant 0 are idle."""
    torch.manual_seed(0)
    model = gs.models.create_model("resnet20", in_channels=1, init="fixup", norm="none")
    nn.init.normal_(model.head.fc.weight, std=0.1)  # Fixup also zeroes the classifier: no gradient at all otherwise
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
        mon.step()
    found = {f.code: f for f in gs.diagnose(tmp_path / "run")}
    assert "idle_branch" not in found
    assert found["small_init_branch"].severity == "info" and len(found["small_init_branch"].layers) == 9


def test_amp_skipped_steps_are_not_an_error(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with gs.watch(model, tmp_path / "run", optimizer=opt, scaler=scaler) as mon:
        for i in range(12):
            scaler.scale(model(torch.randn(3, 4)).pow(2).mean()).backward()
            if i == 3:
                model[0].weight.grad[0, 0] = float("inf")
            mon.step()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    found = {f.code: f for f in gs.diagnose(tmp_path / "run")}
    assert "nonfinite" not in found
    assert found["amp_skipped_steps"].severity == "info" and found["amp_skipped_steps"].steps == [3]


def test_thresholds_are_configurable():
    torch.manual_seed(0)
    model = gs.models.create_model("mlp20_lecun_nobias")
    lenient = Thresholds(vanish_ratio=1e9, gain_low=0.1, dead_frac=1.1)
    findings = checkup(model, input_shape=(784,), steps=1, thresholds=lenient)
    assert "vanishing_gradients" not in codes(findings)


def test_assert_healthy():
    torch.manual_seed(0)
    healthy = gs.models.create_model("resnet20", in_channels=1)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    gs.assert_healthy(healthy, x, nn.functional.cross_entropy, y)
    broken = _net(NaNBackward(16, 16))
    before = [p.detach().clone() for p in broken.parameters()]
    with pytest.raises(UnhealthyGradientsError) as info:
        gs.assert_healthy(broken, torch.randn(5, 8))
    assert "nonfinite" in str(info.value)
    assert info.value.findings[0].code == "nonfinite"
    assert all(torch.equal(a, b) for a, b in zip(before, broken.parameters(), strict=True))  # the model is untouched
    assert all(p.grad is None for p in broken.parameters())


def test_doctor_cli_exit_status(tmp_path, capsys):
    broken = _net(NaNBackward(16, 16))
    _train(broken, tmp_path / "bad", steps=1)
    assert main(["doctor", str(tmp_path / "bad")]) == 1
    assert "nonfinite" in capsys.readouterr().out
    assert main(["doctor", "resnet20", "--input-shape", "1,28,28", "--steps", "2", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "gradsight doctor: model resnet20" in out
    assert main(["doctor", "mlp20_lecun_nobias", "--input-shape", "784", "--steps", "1", "--fail-on", "warning",
                 "--json"]) == 1
    assert '"vanishing_gradients"' in capsys.readouterr().out
    assert main(["doctor", "no_such_model", "--input-shape", "1,28,28"]) == 2
    assert main(["doctor", "resnet20"]) == 2  # neither a run nor given an input shape
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "Traceback" not in err


def test_severity_is_ordered_and_reads_as_its_word():
    assert Severity.INFO < Severity.WARNING < Severity.ERROR
    assert Severity.ERROR >= "warning" and not Severity.INFO >= "warning"
    assert sorted(["error", "info", "warning"], key=Severity) == ["info", "warning", "error"]
    finding = gs.Finding("x", "warning", "message")
    assert finding.severity is Severity.WARNING and finding.severity == "warning"
    assert str(finding.severity) == "warning" and finding.to_dict()["severity"] == "warning"
    assert str(finding).startswith("WARNING x: message")
    with pytest.raises(ValueError, match="severity must be one of"):
        gs.Finding("x", "fatal", "message")
    findings = [gs.Finding(c, sev, "m") for c, sev in (("a", "info"), ("b", "error"), ("c", "warning"))]
    assert [line.split()[1] for line in gs.format_findings(findings).splitlines()] == ["b:", "c:", "a:"]


def test_vanishing_gradients_compares_like_with_like_layers_regression_bert_query_vs_pooler(tmp_path):
    """A BERT-like encoder: each block's query and key get 100x smaller gradients than its
    other layers (attention near uniform at init), and the pooler is fed straight by the
    loss. First-vs-last weighted layer (query vs pooler) read that as vanishing; each layer
    compared with itself in the other blocks sees no change with depth. Shrinking every
    block's gradient 1e3x per block is vanishing, and is found."""
    from gradsight.diagnosis.rules import depth_profiles

    class Block(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.query, self.key, self.value, self.dense = (nn.Linear(8, 8) for _ in range(4))
            for lin in (self.value, self.dense):
                nn.init.orthogonal_(lin.weight)  # gain 1: the gradient keeps its size through a block
            self.scale = scale

        def forward(self, x):
            q = self.query(x) * 1e-2
            return self.dense(self.value(x) + q * self.key(x)) * self.scale

    class Encoder(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.layer = nn.ModuleList(Block(scale) for _ in range(4))
            self.pooler = nn.Linear(8, 8)

        def forward(self, x):
            for block in self.layer:
                x = block(x)
            return self.pooler(x)

    def judged(scale, name):
        torch.manual_seed(0)
        model = Encoder(scale)
        with gs.watch(model, tmp_path / name) as mon:
            for _ in range(2):
                model(torch.randn(16, 8)).pow(2).mean().backward()
                mon.step()
                model.zero_grad()
        with gs.RunView(tmp_path / name) as view:
            (param,) = [d for d in depth_profiles(view) if d.key == "param"]
            return param, gs.diagnose(view)

    param, findings = judged(1.0, "healthy")
    assert param.span == 3 and param.ends == ("layer.0", "layer.3")
    assert abs(param.median) < 1.5 and "vanishing_gradients" not in codes(findings)
    param, findings = judged(0.03, "sick")  # the gradient shrinks ~30x per block going back, and more
    assert param.median < -3 and "vanishing_gradients" in codes(findings)


def test_checkup_passes_watch_options_through(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    checkup(model, input_shape=(4,), steps=2, run_dir=tmp_path / "run", watch={"histograms": 1, "weights": False})
    run = gs.open_run(tmp_path / "run")
    assert (run.meta["histograms_every"], run.meta["weight_stats"], run.meta["update_ratio_every"]) == (1, False, 1)
    assert run.config == {"steps": 2, "lr": 1e-3, "seed": 0} and run.meta["name"] == "doctor"
    with pytest.raises(TypeError, match="checkup takes optimizer itself"):
        checkup(model, input_shape=(4,), steps=2, watch={"optimizer": None})


class _ZeroScale(nn.Module):
    """A per-feature scale initialized at exactly zero (zero-init BatchNorm, SkipInit)."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width))

    def forward(self, x):
        return x * self.weight


def test_zero_scale_without_skip_cuts_the_gradient_off(tmp_path):
    """A zero-initialized scale with no skip around it, followed by a ReLU: its output is 0,
    ReLU's slope at 0 is 0, so neither the scale nor anything before it ever gets a gradient
    (exactly zero, checked here with autograd), and the doctor says the gradient stops."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), _ZeroScale(16), nn.ReLU(),
                          nn.Linear(16, 4))
    model(torch.randn(5, 8)).pow(2).mean().backward()
    assert float(model[0].weight.grad.abs().sum()) == 0 and float(model[5].bias.grad.abs().sum()) > 0
    model.zero_grad()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with gs.watch(model, tmp_path / "run", optimizer=opt, activations=True) as mon:
        for _ in range(8):
            model(torch.randn(5, 8)).pow(2).mean().backward()
            mon.step()
            opt.step()
            opt.zero_grad()
    (f,) = [f for f in gs.diagnose(tmp_path / "run") if f.code == "vanishing_gradients"]
    assert f.severity == "error"
    assert f.measured["layers_without_gradient"] == 3
    assert "'3' still holds exactly zero weights" in f.message and "'5'" in f.message


def _adam_run(tmp_path, lr: float, steps: int = 20):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    with gs.watch(model, tmp_path / f"lr{lr}", optimizer=opt, update_ratio=True) as mon:
        for _ in range(steps):
            x, y = torch.randn(16, 16, generator=gen), torch.randint(0, 4, (16,), generator=gen)
            nn.functional.cross_entropy(model(x), y).backward()
            mon.step()
            opt.step()
            opt.zero_grad()
    return model, gs.diagnose(tmp_path / f"lr{lr}")


def test_weights_grown_far_from_their_init_mean_the_learning_rate_is_too_high(tmp_path):
    """Adam moves every element by about lr per step: at lr 0.1 the weights (RMS ~0.1) are
    carried several times their own size within 20 steps; at 1e-3 they barely move. The
    growth the finding reports is the weights' own (checked against the model)."""
    init = {n: float(p.detach().norm()) for n, p in _adam_run(tmp_path, lr=0.0, steps=1)[0].named_parameters()}
    model, findings = _adam_run(tmp_path, lr=0.1)
    (f,) = [f for f in findings if f.code == "update_ratio_high"]
    assert "grew faster than 3 times per 20 updates" in f.message
    layer = f.layers[0]
    weight = dict(model.named_parameters())[layer + ".weight"]
    grown = float(weight.detach().norm()) / init[layer + ".weight"]  # 20 updates; biases are not judged
    # the run's last recorded step holds the weights after 19 updates, scaled by the rule to 20
    assert f.measured[layer] == pytest.approx(grown, rel=0.2)
    _, calm = _adam_run(tmp_path, lr=1e-3)
    assert "update_ratio_high" not in codes(calm)


@pytest.mark.parametrize("grown", ["0", "1", "8"])
def test_a_batchnorm_gain_the_next_batchnorm_normalizes_away_may_grow(tmp_path, grown):
    """The first BatchNorm's gain is followed by a ReLU, a convolution and another BatchNorm,
    which removes its scale: multiplying it by 1.15 a step (the loss unchanged, checked) is no
    sign of a learning rate too high; the same growth of the head's weights is. The
    convolution feeding the first BatchNorm is scale-invariant too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    losses = []
    with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=True) as mon:
        for _ in range(20):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            losses.append(float(loss))
            mon.step()
            opt.step()
            opt.zero_grad()
            with torch.no_grad():
                model[int(grown)].weight.mul_(1.15)
    found = {f.code for f in gs.diagnose(tmp_path / "run") if f.severity >= "warning"}
    if grown in ("0", "1"):
        assert max(losses) - min(losses) < 1e-4  # scale-invariant: the function does not change
        assert "update_ratio_high" not in found
    else:
        assert "update_ratio_high" in found


def test_a_norm_gain_stored_as_an_offset_is_no_small_scale(tmp_path):
    """Gemma's RMSNorm computes ``x * (1 + w)`` with ``w`` starting at 0: its output keeps its
    input's scale, so the layers after it are not "behind a small scale", and a learning rate
    1e4 times too small is reported as it is without the norm (a zero-initialized BatchNorm,
    whose output is 0, stays a small scale)."""

    class OffsetRMSNorm(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(d))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.weight)

    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.norm, self.fc1, self.fc2 = OffsetRMSNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            return x + self.fc2(torch.relu(self.fc1(self.norm(x))))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), Block(32), Block(32), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-7)
    gen = torch.Generator().manual_seed(0)
    with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=True, activations=True) as mon:
        for _ in range(20):
            x, y = torch.randn(16, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen)
            nn.functional.cross_entropy(model(x), y).backward()
            mon.step()
            opt.step()
            opt.zero_grad()
    from gradsight.diagnosis import rules
    from gradsight.store.view import RunView

    with RunView(tmp_path / "run") as view:
        assert "1.norm" not in rules.small_initialized(view, gs.Thresholds())
    assert "update_ratio_low" in codes(gs.diagnose(tmp_path / "run"), "warning")


def test_unused_mask_token_on_a_used_model_is_info_regression_xlnet_mask_emb(tmp_path):
    """XLNet keeps ``mask_emb`` as a bare parameter of the model itself, used only with
    permutation masks: the model runs (its children get gradients), so the token is a
    parameter of another mode (info), while a registered but never called module stays a
    warning."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.mask_emb = nn.Parameter(torch.zeros(1, 8))
            self.body = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
            self.unused = nn.Linear(8, 8)

        def forward(self, x):
            return self.body(x)

    torch.manual_seed(0)
    model = Net()
    with gs.watch(model, tmp_path / "run") as mon:
        for _ in range(3):
            model(torch.randn(4, 8)).pow(2).mean().backward()
            mon.step()
            model.zero_grad()
    found = {(f.code, str(f.severity)): f for f in gs.diagnose(tmp_path / "run")}
    assert found[("no_gradient", "info")].layers == ["mask_emb"]
    assert sorted(found[("no_gradient", "warning")].layers) == ["unused.bias", "unused.weight"]


def test_logits_far_too_large_at_initialization_without_repeated_layers(tmp_path):
    """Every weight x10 in a 4-layer ReLU MLP: each layer multiplies the signal by about 10,
    forward and backward together, so per-layer ratios look flat and there are too few
    repeated layers to compare; the outputs' RMS at step 0 says it (checked against the
    model's own output on the same batch), and a healthy init says nothing."""
    for scale, sick in ((10.0, True), (1.0, False)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64),
                              nn.ReLU(), nn.Linear(64, 10))
        with torch.no_grad():
            for layer in model[::2]:
                layer.weight.mul_(scale)
        gen = torch.Generator().manual_seed(0)
        batches = [(torch.randn(16, 32, generator=gen), torch.randint(0, 10, (16,), generator=gen)) for _ in range(6)]
        with torch.no_grad():
            expected = float(model(batches[0][0]).pow(2).mean().sqrt())
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        with gs.watch(model, tmp_path / f"x{scale}", optimizer=opt, activations=True) as mon:
            for x, y in batches:
                nn.functional.cross_entropy(model(x), y).backward()
                mon.step()
                opt.step()
                opt.zero_grad()
        found = [f for f in gs.diagnose(tmp_path / f"x{scale}") if f.code == "exploding_forward"]
        assert bool(found) == sick
        if sick:
            assert "far too large at initialization" in found[0].message and found[0].layers == ["6"]
            assert found[0].measured["initial_output_rms"] == pytest.approx(expected, rel=1e-3)
            assert expected > 50


def test_saturation_is_mean_over_spread_of_the_layers_output(tmp_path):
    """``|mean| / std`` of a layer's output, from the recorded channel moments, against the
    same ratio computed from the outputs themselves in float64."""
    from gradsight.diagnosis.rules import _saturation

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, -0.3]))
    x = torch.randn(64, 6)
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(x).pow(2).mean().backward()
        mon.step()
    h = model[0](x).detach().double()
    expected = math.sqrt(float(h.mean(0).pow(2).mean() / h.var(0, unbiased=False).mean()))
    with gs.RunView(tmp_path / "run") as view:
        assert _saturation(view, "0") == pytest.approx(expected, rel=1e-4)


def _plain_cnn(act: type[nn.Module]) -> nn.Module:
    """Four convolutions of four different shapes (no two alike: no like-with-like profile)."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), act(), nn.Conv2d(8, 12, 3, padding=1), act(), nn.MaxPool2d(2),
                         nn.Conv2d(12, 16, 3, padding=1), act(), nn.Conv2d(16, 20, 3, padding=1), act(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(20, 10))


@pytest.mark.parametrize("act", [nn.ReLU, nn.Sigmoid])
def test_plain_chain_fade_is_the_first_layers_gradient_on_its_weights_over_the_lasts(tmp_path, act):
    """The statistic against ||g|| / ||w|| of the first and last convolutions computed here in
    float64 from their .grad at each step (median over the last half of the steps); the
    sigmoids' slope (at most 1/4 per layer) makes it vanishing, the ReLUs' does not
    (Glorot & Bengio 2010)."""
    from gradsight.diagnosis.rules import plain_chain_fade

    torch.manual_seed(0)
    model = _plain_cnn(act)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ratios = []
    with gs.watch(model, tmp_path / "run", optimizer=opt) as mon:
        for _ in range(10):
            x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 10, (16,))
            nn.functional.cross_entropy(model(x), y).backward()

            def g_over_w(conv):
                params = [conv.weight, conv.bias]
                g = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))
                w = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in params))
                return g / w

            ratios.append(g_over_w(model[0]) / g_over_w(model[7]))
            mon.step()
            opt.step()
            opt.zero_grad()
    with gs.RunView(tmp_path / "run") as view:
        log10, ends, n, _ = plain_chain_fade(view)
        findings = [f for f in gs.diagnose(view) if f.code == "vanishing_gradients"]
    expected = float(np.median(ratios[5:]))
    assert 10**log10 == pytest.approx(expected, rel=1e-4)
    assert ends == ("0", "7") and n == 4
    if act is nn.Sigmoid:
        assert expected < 1e-2 and len(findings) == 1
        assert findings[0].layers == ["0", "7"] and "without normalization" in findings[0].message
    else:
        assert expected > 0.02 and findings == []


def test_plain_chain_fade_leaves_normalized_and_alike_networks_to_the_other_rules(tmp_path):
    from gradsight.diagnosis.rules import plain_chain_fade

    torch.manual_seed(0)
    normed = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Sigmoid(), nn.Conv2d(8, 12, 3), nn.Sigmoid(),
                           nn.Conv2d(12, 16, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(16 * 10 * 10, 10))
    alike = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(16, 16), nn.Sigmoid())], nn.Linear(16, 3))
    for name, model, shape in (("normed", normed, (4, 1, 16, 16)), ("alike", alike, (4, 16))):
        with gs.watch(model, tmp_path / name) as mon:
            model(torch.randn(*shape)).sum().backward()
            mon.step()
        with gs.RunView(tmp_path / name) as view:
            assert plain_chain_fade(view) is None


@pytest.mark.parametrize("loop", ["step_before_backward", "zero_grad_before_step", "lr_0", "lr_1e-9"])
def test_updates_of_exactly_zero_are_told_from_a_learning_rate_too_low(tmp_path, loop):
    """The optimizer stepping without the gradients (before the backward pass, or after a
    zero_grad() that followed it) or at learning rate 0 leaves every weight exactly as it was
    (checked on float64 copies): no "raise the learning rate" for the first two; a learning rate
    of 1e-9 moves them a little and gets the usual advice."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    lr = {"lr_0": 0.0, "lr_1e-9": 1e-9}.get(loop, 1e-3)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    start = [p.detach().double().clone() for p in model.parameters()]
    with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=True) as mon:
        for _ in range(12):
            x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
            opt.zero_grad()
            if loop == "step_before_backward":
                opt.step()
            nn.functional.cross_entropy(model(x), y).backward()
            mon.step()
            if loop == "zero_grad_before_step":
                opt.zero_grad()
            if loop != "step_before_backward":
                opt.step()
    unchanged = all(torch.equal(p.detach().double(), s) for p, s in zip(model.parameters(), start))
    assert unchanged is (loop != "lr_1e-9")
    [low] = [f for f in gs.diagnose(tmp_path / "run") if f.code == "update_ratio_low"]
    assert low.severity == "warning"
    if unchanged:
        assert "exactly 0" in low.message and "optimizer.step() before loss.backward()" in low.message
    else:
        assert "raise the learning rate" in low.message
