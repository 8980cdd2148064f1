"""Figures of a recorded LSTM language model: two weighted LSTM layers in the depth figures,
and the gradient through time (``gs.plots.through_time``, ``gradsight plot --kind time``)
whose lines are torch.autograd.grad's ‖∂L/∂h_t‖."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gradsight as gs
from gradsight.cli import main
from tests.instrument.test_recurrent import SEQ, LSTMLanguageModel, train


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("lstm_plots") / "run"
    _, seq_grads = train(LSTMLanguageModel(), run_dir, steps=3)
    return run_dir, seq_grads


def test_through_time_figure_draws_autograds_norms(lstm_run):
    run_dir, seq_grads = lstm_run
    fig = gs.plots.through_time(run_dir)
    (ax,) = fig.axes
    lines = [line for line in ax.get_lines() if line.get_label().startswith("step ")]
    assert [line.get_label() for line in lines] == ["step 0", "step 1", "step 2"]
    for line, sg in zip(lines, seq_grads):
        want = [float(sg[t].norm()) for t in range(SEQ)]
        np.testing.assert_array_equal(line.get_xdata(), np.arange(SEQ))
        np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-5)
    assert ax.get_yscale() == "log" and "rnn" in ax.get_title()
    # the gain through the recurrence (the probe's, tested against float64 unrolls) written on it
    with gs.open_run(run_dir) as run:
        gain = float(run.series("time_grad_gain", level="module").loc[2, "rnn"])
        steps = float(run.series("time_steps", level="module").loc[2, "rnn"])
    (text,) = [t.get_text() for t in ax.texts]
    assert text == f"step 2: through the recurrence: x{gain:.3g} per time step, x{gain ** steps:.2g} over its {steps:.0f} steps"
    assert 0 < gain < 1


def test_through_time_into_given_axes_and_without_data(lstm_run, tmp_path):
    from matplotlib.figure import Figure

    run_dir, _ = lstm_run
    fig = Figure()
    ax = fig.add_subplot()
    assert gs.plots.through_time(run_dir, "rnn", steps=[1], ax=ax) is fig
    assert [line.get_label() for line in ax.get_lines()] == ["step 1"]
    model = LSTMLanguageModel()
    with gs.watch(model, tmp_path / "plain") as mon:  # through_time not asked for
        model(torch.zeros(3, 2, dtype=torch.long)).sum().backward()
        mon.step()
    text = " ".join(t.get_text() for t in gs.plots.through_time(tmp_path / "plain").axes[0].texts)
    assert "through_time=True" in text


def test_depth_figures_show_each_lstm_layer(lstm_run):
    run_dir, _ = lstm_run
    flow = gs.plots.flow(run_dir)
    labels = [t.get_text() for t in flow.axes[0].get_xticklabels()]
    assert labels == ["rnn.l0", "rnn.l1", "decoder"]  # weighted layers and head: the LSTM's two layers, not one dot
    heatmap = gs.plots.heatmap(run_dir)
    rows = [t.get_text() for ax in heatmap.axes for t in ax.get_yticklabels()]
    assert {"rnn.l0", "rnn.l1"} <= set(rows)


def test_cli_plot_kind_time(lstm_run, tmp_path, capsys):
    run_dir, _ = lstm_run
    out = tmp_path / "time.svg"
    assert main(["plot", str(run_dir), "--kind", "time", "--step", "2", "-o", str(out)]) == 0
    assert "gradient at each time step's output: rnn" in out.read_text() and "through the recurrence" in out.read_text()
    assert main(["plot", str(run_dir), "--kind", "time", "--step", "7", "-o", str(out)]) == 2
    assert "no gradient through time at step 7" in capsys.readouterr().err
