"""The probes' figures: path lengths, shattered gradients, signal propagation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

import gradsight as gs
from gradsight.models import create_model
from gradsight.plots.probes import plot_path_lengths, plot_shattering, plot_signal_propagation


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def test_path_lengths_draws_the_three_panels(tmp_path) -> None:
    model = create_model("resmlp", depth=8, width=8, in_features=4, num_classes=2)
    result = gs.path_lengths(model, input_shape=(4,), samples=2)
    fig = plot_path_lengths(result, title="resmlp")
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert fig.axes[1].get_yscale() == "log"
    assert [len(ax.containers[0]) for ax in (fig.axes[0], fig.axes[2])] == [result.n_blocks + 1] * 2  # bars
    fig.savefig(tmp_path / "paths.png")
    assert (tmp_path / "paths.png").stat().st_size > 10_000


def test_shattering_has_two_rows_one_column_per_network() -> None:
    options = {"in_features": 1, "num_classes": 1, "norm": "batch", "bias": True, "init": "he"}
    results = {name: gs.shattering(create_model(name, depth=4, width=8, **options), n_points=64)
               for name in ("mlp", "resmlp")}
    fig = plot_shattering(results)
    assert len(fig.axes) == 4
    assert [fig.axes[i].get_title().split("\n")[0] for i in range(2)] == ["mlp", "resmlp"]
    assert fig.axes[0].get_lines()[0].get_color() != fig.axes[1].get_lines()[0].get_color()


def test_shattering_needs_results() -> None:
    with pytest.raises(ValueError, match="empty"):
        plot_shattering({})


def test_signal_propagation_overlays_networks_on_relative_depth(tmp_path) -> None:
    tables = []
    for name in ("resnet20", "plain20"):
        t = gs.probe(create_model(name, in_channels=1), input_shape=(1, 28, 28), batch_size=8)
        t["label"] = name
        tables.append(t)
    fig = plot_signal_propagation(pd.concat(tables), title="test")
    fwd, bwd = fig.axes[:2]
    assert fwd.get_yscale() == "log" and len(fwd.lines) >= 4 and len(bwd.lines) == 2
    for line in bwd.lines:
        x = line.get_xdata()
        assert x[0] == 0.0 and x[-1] == 1.0
    fig.savefig(tmp_path / "spp.png")
    assert (tmp_path / "spp.png").stat().st_size > 10_000


def test_no_module_chooses_a_backend_or_uses_pyplot() -> None:
    """Figures are ``matplotlib.figure.Figure`` objects: importing gradsight must leave the
    caller's backend alone, and nothing registers figures with pyplot."""
    import re
    from pathlib import Path

    source = Path(gs.__file__).parent
    offending = [str(path.relative_to(source)) for path in source.rglob("*.py")
                 if re.search(r"matplotlib\.use\(|import matplotlib\.pyplot|from matplotlib import pyplot",
                              path.read_text())]
    assert offending == []


def test_signal_propagation_of_a_transformer_uses_the_stream_of_each_addition(tmp_path) -> None:
    """A pre-LN GPT block has two additions and no single output: the forward panel shows the
    stream's mean square before each addition (stream_rms**2; the first one is the embedding sum,
    computed here directly), the backward panel the gradient through each skip."""
    model = create_model("gpt_preln", depth=3, width=16, heads=2, context=8)
    ids = torch.randint(0, 256, (4, 8))
    table = gs.probe(model, ids)
    blocks = table[table["kind"] == "block"].sort_values("depth")
    assert len(blocks) == 6 and blocks["act_var"].isna().all() and blocks["out_grad_norm"].isna().all()
    fig = plot_signal_propagation(table, title="gpt_preln")
    fwd, bwd = fig.axes[:2]
    lines = {line.get_label(): line for line in fwd.lines}
    assert set(lines) == {"residual-branch variance", "stream mean square before the addition"}
    stream = lines["stream mean square before the addition"]
    np.testing.assert_allclose(stream.get_xdata(), range(6))
    np.testing.assert_allclose(stream.get_ydata(), blocks["stream_rms"] ** 2, rtol=1e-12)
    with torch.no_grad():
        embedded = (model.transformer.wte(ids) + model.transformer.wpe(torch.arange(8))).double()
    assert stream.get_ydata()[0] == pytest.approx(float(embedded.pow(2).mean()), rel=1e-4)
    (skip,) = bwd.lines
    assert skip.get_label() == "additions: gradient through the skip"
    np.testing.assert_allclose(skip.get_ydata(), blocks["skip_grad_norm"], rtol=1e-12)
    assert np.isfinite(skip.get_ydata()).all() and (skip.get_ydata() > 0).all()
    fig.savefig(tmp_path / "spp.png")
    assert (tmp_path / "spp.png").stat().st_size > 10_000
