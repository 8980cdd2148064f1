"""The gradient through time of recurrent modules in the check-up (``through_time``): recorded for
nn.RNNBase modules only, and judged: a tanh RNN with every weight x0.1 vanishes through time, x10
explodes (its units saturate, but the weights' scale wins: the gain per step goes above 1), a
default-initialized one is neither. The gain itself is checked against a float64 unroll in
tests/instrument/test_recurrent.py; here once more, against the gradient of ``u · h_{T-1}`` with
respect to the initial state of the RNN unrolled by hand."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

import gradsight as gs
from gradsight.diagnosis import measure
from gradsight.instrument.recurrent import (
    PROBE_SAMPLES,
    PROBE_SEED,
    TIME_GAIN_STAT,
    TIME_STEPS_STAT,
)
from gradsight.store.view import RunView

VOCAB, WIDTH, SEQ, BATCH, CLASSES = 30, 32, 12, 8, 4


class TanhRNNClassifier(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.rnn = nn.RNN(WIDTH, WIDTH, batch_first=True)
        self.head = nn.Linear(WIDTH, CLASSES)
        with torch.no_grad():
            for name, p in self.rnn.named_parameters():
                if name.startswith("weight"):
                    p.mul_(scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        _, h_n = self.rnn(self.embed(ids))
        return self.head(h_n[-1])


def _checkup(scale: float, run_dir):
    torch.manual_seed(0)
    model = TanhRNNClassifier(scale)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=g)
    findings = gs.checkup(model, inputs=ids, targets=labels, loss_fn=F.cross_entropy, steps=4, run_dir=run_dir)
    return model, ids, findings


def _through_time(findings, code):
    return [f for f in findings if f.code == code and "through time" in f.message]


def _gain_along_hidden_states(model: TanhRNNClassifier, ids: torch.Tensor) -> float:
    """The RNN unrolled by hand in float64 over the probe's samples: ‖∂(u · h_{T-1}) / ∂h_{-1}‖ at the
    initial state, T steps back from the last, over ‖u‖, to the 1/T."""
    rnn = model.rnn
    x = model.embed(ids[:PROBE_SAMPLES]).double().detach().transpose(0, 1)
    w_ih, w_hh, b_ih, b_hh = (p.detach().double() for p in (rnn.weight_ih_l0, rnn.weight_hh_l0,
                                                             rnn.bias_ih_l0, rnn.bias_hh_l0))
    initial = torch.zeros(x.shape[1], WIDTH, dtype=torch.float64, requires_grad=True)
    h = initial
    for x_t in x:
        h = torch.tanh(x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
    u = torch.randn(1, x.shape[1], WIDTH, generator=torch.Generator().manual_seed(PROBE_SEED))[0].double()
    [grad] = torch.autograd.grad((u * h).sum(), [initial])
    return (float(grad.norm()) / float(u.norm())) ** (1 / SEQ)


def test_checkup_records_the_gain_through_time_of_recurrent_modules_only(tmp_path):
    _checkup(1.0, tmp_path / "rnn")
    with RunView(tmp_path / "rnn") as view:
        gains = view.matrix("module", TIME_GAIN_STAT, steps="all")
        steps = view.matrix("module", TIME_STEPS_STAT, steps="all")
        assert list(gains.columns) == ["rnn"] and len(gains) == 4 and set(steps["rnn"]) == {SEQ}
    mlp = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    gs.checkup(mlp, input_shape=(8,), steps=2, run_dir=tmp_path / "mlp")
    with RunView(tmp_path / "mlp") as view:
        assert TIME_GAIN_STAT not in view.stats("module")


def test_healthy_tanh_rnn_is_not_flagged_and_its_gain_matches_an_unrolled_reference(tmp_path):
    torch.manual_seed(0)
    fresh = TanhRNNClassifier(1.0)  # the weights of the check-up's first step (it trains a copy)
    _, ids, findings = _checkup(1.0, tmp_path / "run")
    assert not [f for f in findings if f.code in ("vanishing_gradients", "exploding_gradients")], findings
    with RunView(tmp_path / "run") as view:
        first = float(view.matrix("module", TIME_GAIN_STAT, steps="all")["rnn"].iloc[0])
        m = measure(view)
    want = _gain_along_hidden_states(fresh, ids)
    assert math.isclose(first, want, rel_tol=1e-5)
    th = gs.Thresholds()
    assert th.time_gain_low < m["time_gain_min"] < 1 and m["time_growth_log10_max"] < 0


def test_weights_x01_vanish_through_time(tmp_path):
    _, _, findings = _checkup(0.1, tmp_path / "run")
    [found] = _through_time(findings, "vanishing_gradients")
    assert found.layers == ["rnn"] and found.severity == "warning"
    assert found.measured["gain_per_step"] < gs.Thresholds().time_gain_low
    assert found.measured["time_steps"] == SEQ
    assert "orthogonal" in found.message and "steps 2-3" in found.message
    assert not _through_time(findings, "exploding_gradients")


def test_weights_x10_explode_through_time(tmp_path):
    _, _, findings = _checkup(10.0, tmp_path / "run")
    [found] = _through_time(findings, "exploding_gradients")
    assert found.layers == ["rnn"]
    assert found.measured["gain_per_step"] > 1
    assert found.measured["log10_over_sequence"] > math.log10(gs.Thresholds().time_explode)
    assert "clip" in found.message.lower()
    assert not _through_time(findings, "vanishing_gradients")
