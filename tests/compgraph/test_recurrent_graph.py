"""The graph of an LSTM language model coloured by its run, whose layers are the LSTM's stacked
layers (rnn.l0, rnn.l1), not the module: the module node folds its parameters and takes the
norm of its layers' values."""

from __future__ import annotations

import math

import torch

import gradsight as gs
from gradsight.compgraph.nodes import MODULE, PARAM
from tests.instrument.test_recurrent import LSTMLanguageModel, batch, train


def test_lstm_module_node_is_coloured_by_its_stacked_layers(tmp_path):
    torch.manual_seed(0)
    model = LSTMLanguageModel()
    train(model, tmp_path / "run", steps=2)
    graph = gs.graph(model, batch(0)[0], run=tmp_path / "run", view="module")
    means = gs.RunView(tmp_path / "run").matrix("layer", "grad_norm").mean()
    (rnn,) = [n for n in graph.nodes if n.kind == MODULE and n.label == "rnn"]
    assert rnn.layers == ("rnn.l0", "rnn.l1")
    assert math.isclose(rnn.value, math.hypot(means["rnn.l0"], means["rnn.l1"]), rel_tol=1e-6)
    assert not [n for n in graph.nodes if n.kind == PARAM]  # every parameter folds into its module's node
