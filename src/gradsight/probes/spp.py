"""Signal Propagation Plots (Brock, De & Smith 2021) and their backward counterpart."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def plot_signal_propagation(table: pd.DataFrame, *, title: str | None = None, axes=None) -> Figure:
    """Forward and backward signal propagation per residual block (or per layer).

    Args:
        table: the DataFrame :func:`gradsight.probe` returns (or several
            concatenated, with a ``label`` column to overlay networks).
        title: figure title.
        axes: two matplotlib axes to draw on (forward, backward); new ones if None.

    Returns:
        The figure: left, the average squared channel mean (``act_mean_sq``),
        average channel variance (``act_var``) and residual-branch variance
        (``branch_var``) of each block's output against block depth; right, the
        gradient norm arriving at each block's output (``out_grad_norm``). Uses
        conv/linear layers instead when the network has no residual blocks. Log y
        scale; with several networks (a ``label`` column) depth is normalized to
        0..1 so networks of different depth line up.
    """
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    else:
        fig = axes[0].figure
    fwd, bwd = axes
    labels = table["label"].unique().tolist() if "label" in table else [None]
    normalize = len(labels) > 1
    styles = {"act_mean_sq": ("-", "avg squared channel mean"), "act_var": ("--", "avg channel variance"),
              "branch_var": (":", "residual-branch variance")}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, label in enumerate(labels):
        df = table if label is None else table[table["label"] == label]
        kind = "block" if (df["kind"] == "block").any() else "layer"
        rows = df[df["kind"] == kind].sort_values("depth")
        if kind == "layer":  # normalization outputs are ~0 mean / unit variance by construction
            rows = rows[~rows["module_type"].astype(str).str.contains("Norm")]
        x = rows["depth"].rank(method="first") - 1
        if normalize:
            x = x / max(len(rows) - 1, 1)
        color = colors[i % len(colors)]
        prefix = f"{label}: " if label is not None else ""
        for stat, (ls, text) in styles.items():
            if stat in rows and rows[stat].notna().any():
                fwd.plot(x, rows[stat], ls, color=color, marker="o", ms=2.5, label=prefix + text)
        bwd.plot(x, rows["out_grad_norm"], "-", color=color, marker="o", ms=2.5,
                 label=prefix + ("blocks" if kind == "block" else "conv/linear layers"))
    xlabel = "relative depth (0 = input side, 1 = output side)" if normalize else "block (or layer) index, forward order"
    fwd.set_xlabel(xlabel)
    bwd.set_xlabel(xlabel)
    fwd.set_yscale("log")
    bwd.set_yscale("log")
    fwd.set_title("forward: signal propagation")
    bwd.set_title("backward: gradient reaching each output")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
    if title:
        fig.suptitle(title)
    return fig
