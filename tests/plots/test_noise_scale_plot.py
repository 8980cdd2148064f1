"""The noise scale figure (``gs.plots.noise_scale``, ``gradsight plot --kind noise``)."""

from __future__ import annotations

import numpy as np

import gradsight as gs
from gradsight import plots
from gradsight.cli import main
from tests.noise_runs import record


def test_the_figure_draws_the_recorded_noise_scale_and_batch(tmp_path):
    run = gs.open_run(record(tmp_path / "run", noise=0.0, micro=8, accumulate=2))
    ax = plots.noise_scale(run).axes[0]
    lines = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    np.testing.assert_allclose(lines["noise scale B_simple"], run.series("gns", "model").iloc[:, 0])
    np.testing.assert_allclose(lines["batch size (samples)"], 16)
    assert ax.get_yscale() == "log"


def test_a_run_without_noise_scale_says_so(tmp_path, tiny_run, capsys):
    ax = plots.noise_scale(tiny_run).axes[0]
    assert any("no noise scale recorded" in t.get_text() for t in ax.texts)
    assert main(["plot", str(tiny_run), "--kind", "noise", "-o", str(tmp_path / "n.png")]) == 2
    assert "has no gradient noise scale" in capsys.readouterr().err


def test_plot_kind_noise_writes_the_figure(tmp_path):
    run_dir = record(tmp_path / "run", noise=0.0, micro=8, accumulate=2)
    out = tmp_path / "noise.svg"
    assert main(["plot", str(run_dir), "--kind", "noise", "-o", str(out)]) == 0
    assert "gradient noise scale: run" in out.read_text()
