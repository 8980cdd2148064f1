"""The doctor on a recurrent layer with saturated gates: zero gate rows are counted per stacked
layer (not pooled over the LSTM) and the advice speaks of gates, cell state and clipping."""

from __future__ import annotations

import torch

import gradsight as gs
from gradsight.instrument.recurrent import gate_stat
from tests.instrument.test_recurrent import HIDDEN, LSTMLanguageModel, train


def test_saturated_lstm_gates_are_reported_per_stacked_layer_as_gates(tmp_path):
    torch.manual_seed(0)
    model = LSTMLanguageModel()
    with torch.no_grad():  # input, forget and cell gates of layer 0 at sigmoid(60) = 1, tanh(60) = 1 exactly
        model.rnn.bias_ih_l0[:3 * HIDDEN] = 60.0
    grads, _ = train(model, tmp_path / "run", steps=6)
    w = grads[-1]["rnn.weight_hh_l0"]
    assert (w[:3 * HIDDEN] == 0).all() and (w[3 * HIDDEN:] != 0).any()  # what the doctor is to find

    view = gs.RunView(tmp_path / "run")
    for gate in ("input", "forget", "cell"):
        assert (view.matrix("layer", gate_stat(gate))["rnn.l0"] == 0).all()
    assert (view.matrix("layer", gate_stat("output"))["rnn.l0"] > 0).all()
    findings = [f for f in gs.diagnose(view) if f.code in ("silent_units", "dead_units")]
    assert len(findings) == 1
    (finding,) = findings
    assert finding.layers == ["rnn.l0"]  # layer 1 is healthy: 3 of 4 gates of layer 0, not 3 of 8 of the LSTM
    assert finding.measured["rnn.l0"] == 0.75
    text = finding.message
    assert "gate" in text and "cell state" in text and "clip_grad_norm_" in text
    assert "ReLU" not in text and "pooled features" not in text
