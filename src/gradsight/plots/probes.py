"""Figures of the probes: path lengths (Veit et al. 2016, Fig. 6), shattered gradients
(Balduzzi et al. 2017, Fig. 1) and signal propagation (Brock, De & Smith 2021).

Each function takes a probe's result (:func:`gradsight.path_lengths`,
:func:`gradsight.shattering`, :func:`gradsight.probe`) and optional axes, and returns the
figure; none calls ``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradsight.plots._figure import new_axes, styled
from gradsight.display import PALETTE

if TYPE_CHECKING:
    from gradsight.probes.paths import PathLengthResult
    from gradsight.probes.shattered_gradients import ShatteringResult

__all__ = ["plot_autocorrelation", "plot_gradient", "plot_path_lengths", "plot_shattering",
           "plot_signal_propagation"]

_BAND = "#d9d9d9"  # white-noise band, 90% range of paths


def _color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


@styled
def plot_gradient(result: ShatteringResult, ax: Axes | None = None, **line_kw: object) -> Figure:
    """dy/dx against x, as a line (the top row of Balduzzi et al.'s Fig. 1)."""
    fig, ax = new_axes(ax, (4, 3))
    ax.plot(result.x.numpy(), result.grad.numpy(), **{"lw": 0.8, "color": _color(0), **line_kw})
    ax.set_xlabel("input x")
    ax.set_ylabel("dy/dx")
    return fig


@styled
def plot_autocorrelation(result: ShatteringResult, ax: Axes | None = None, max_lag: int = 50,
                         **line_kw: object) -> Figure:
    """Autocorrelation of dy/dx at lags ``0..max_lag``; a grey band marks +-2/sqrt(n), the range
    that 95% of white noise's autocorrelations fall in."""
    fig, ax = new_axes(ax, (4, 3))
    lags = min(max_lag, len(result.autocorrelation) - 1)
    ax.plot(range(lags + 1), result.autocorrelation[: lags + 1].numpy(), **{"lw": 1.0, "color": _color(0), **line_kw})
    band = 2.0 / len(result.grad) ** 0.5
    ax.axhspan(-band, band, color=_BAND, zorder=0)
    ax.axhline(0.0, color="#666666", lw=0.5)
    ax.set_ylim(-0.55, 1.05)
    ax.set_xlabel("lag")
    ax.set_ylabel("autocorrelation")
    return fig


@styled
def plot_shattering(results: Mapping[str, ShatteringResult], axes: Sequence[Sequence[Axes]] | None = None,
                    max_lag: int = 50) -> Figure:
    """Two rows, one column per network: dy/dx against x (top, each on its own scale: the
    gradient's size varies with depth) and its autocorrelation (bottom), titled with the
    network's name and lag-1 autocorrelation.

    Args:
        results: network name -> result, in column order.
        axes: a 2 x len(results) grid of axes; a new figure when ``None``.
        max_lag: last lag shown in the bottom row.
    """
    if not results:
        raise ValueError("nothing to plot: results is empty")
    if axes is None:
        fig = Figure(figsize=(2.6 * len(results) + 0.4, 5.2), layout="constrained")
        grid = fig.subplots(2, len(results), squeeze=False)
        axes = [list(grid[0]), list(grid[1])]
    for column, (name, result) in enumerate(results.items()):
        top, bottom = axes[0][column], axes[1][column]
        plot_gradient(result, top, color=_color(column))
        plot_autocorrelation(result, bottom, max_lag=max_lag, color=_color(column))
        top.set_title(f"{name}\nlag-1 r = {result.lag1:.2f}", fontsize=9)
        if column:
            top.set_ylabel("")
            bottom.set_ylabel("")
    return axes[0][0].figure


@styled
def plot_path_lengths(result: PathLengthResult, axes: Sequence[Axes] | None = None,
                      title: str | None = None) -> Figure:
    """Veit et al.'s Fig. 6 in three panels: (a) the share of paths of each length,
    C(n, k) / 2**n; (b) gradient magnitude of one path of length k (log scale; mean, with the
    range over samples shaded); (c) their product, the gradient each length carries, with its
    peak and central 90% marked.
    """
    if axes is None:
        fig = Figure(figsize=(12, 3.4), layout="constrained")
        axes = list(fig.subplots(1, 3))
    dist_ax, mag_ax, eff_ax = axes
    k = result.lengths.numpy()
    dist_ax.bar(k, result.fraction.numpy(), width=0.9, color=_color(0))
    dist_ax.set_xlabel("path length k")
    dist_ax.set_ylabel("share of paths  C(n,k) / 2^n")
    dist_ax.set_title("(a) distribution of path lengths")

    lo = result.magnitudes.min(dim=1).values.numpy()
    hi = result.magnitudes.max(dim=1).values.numpy()
    mag_ax.fill_between(k, lo, hi, color=_color(1), alpha=0.25, lw=0, label="range over samples")
    mag_ax.plot(k, result.magnitude.numpy(), "o-", ms=3, color=_color(1), label="mean")
    mag_ax.set_yscale("log")
    mag_ax.autoscale_view()
    mag_ax.set_xlabel("path length k")
    mag_ax.set_ylabel("gradient magnitude at input")
    mag_ax.set_title("(b) gradient magnitude per path")
    mag_ax.legend()

    effective = result.effective / result.effective.sum()
    first, last = result.effective_range(0.9)
    eff_ax.axvspan(first - 0.5, last + 0.5, color=_BAND, alpha=0.6, zorder=0, label=f"90%: k = {first}..{last}")
    eff_ax.bar(k, effective.numpy(), width=0.9, color=_color(2))
    peak = result.peak_length
    eff_ax.axvline(peak, color="#000000", lw=0.8, ls="--", label=f"peak k = {peak}")
    eff_ax.set_xlabel("path length k")
    eff_ax.set_ylabel("share of total (magnitude x share)")
    eff_ax.set_title("(c) gradient per path length")
    eff_ax.legend()
    for ax in axes:
        ax.set_xlim(-0.5, result.n_blocks + 0.5)
    fig = dist_ax.figure
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


#: Forward statistics of :func:`gradsight.probe`'s table: column -> (line style, legend text).
SPP_FORWARD = {"act_mean_sq": ("-", "avg squared channel mean"), "act_var": ("--", "avg channel variance"),
               "branch_var": (":", "residual-branch variance")}
#: Line style and legend text of the stream's mean square before an addition (``stream_rms**2``),
#: drawn for the addition rows whose module output has no statistics (modules with several additions).
SPP_STREAM = ("-.", "stream mean square before the addition")


def _signal_lines(rows: pd.DataFrame) -> tuple[dict[str, tuple[str, str, pd.Series]], dict[str, pd.Series]]:
    """The forward and backward lines of :func:`plot_signal_propagation` for one network's rows.

    Forward: ``act_mean_sq``, ``act_var`` (of each block's output) and ``branch_var``; where a
    block row has no output statistics (a module with several additions, such as a transformer
    block, has one row per addition and no single output), the stream's mean square as it
    arrives at the addition, ``stream_rms**2``. Backward: ``out_grad_norm``, the gradient at
    each block's output; where a row has none, ``skip_grad_norm``, the gradient that reaches the
    stream through the addition's skip (``||dL/dz||`` at the addition's output ``z`` for an
    identity skip). Each value is NaN where its row has another line; lines without values go.
    """
    forward: dict[str, tuple[str, str, pd.Series]] = {}
    for stat, (ls, text) in SPP_FORWARD.items():
        if stat in rows:
            forward[stat] = (ls, text, rows[stat])
    backward: dict[str, pd.Series] = {}
    if "out_grad_norm" in rows:
        backward["output"] = rows["out_grad_norm"]
    if "stream_rms" in rows:
        missing = rows["act_var"].isna() if "act_var" in rows else pd.Series(True, index=rows.index)
        forward["stream"] = (*SPP_STREAM, (rows["stream_rms"] ** 2).where(missing))
    if "skip_grad_norm" in rows:
        missing = rows["out_grad_norm"].isna() if "out_grad_norm" in rows else pd.Series(True, index=rows.index)
        backward["skip"] = rows["skip_grad_norm"].where(missing)
    forward = {k: v for k, v in forward.items() if v[2].notna().any()}
    backward = {k: v for k, v in backward.items() if v.notna().any()}
    return forward, backward


@styled
def plot_signal_propagation(table: pd.DataFrame, *, title: str | None = None,
                            axes: Sequence[Axes] | None = None) -> Figure:
    """Forward and backward signal propagation per residual block (or per layer).

    Args:
        table: the DataFrame :func:`gradsight.probe` returns (or several concatenated, with a
            ``label`` column to overlay networks).
        title: figure title.
        axes: two axes to draw on (forward, backward); new ones if None.

    Returns:
        The figure: left, the average squared channel mean (``act_mean_sq``), average channel
        variance (``act_var``) and residual-branch variance (``branch_var``) of each block's
        output against block depth; right, the gradient norm arriving at each block's output
        (``out_grad_norm``). A module with several additions (a transformer block) has one
        row per addition and no output statistics: for those rows the left panel shows the
        stream's mean square before the addition (``stream_rms**2``) and the right panel the
        gradient reaching the stream through the skip (``skip_grad_norm``). Uses conv/linear
        layers instead when the network has no residual blocks. Log y scale; with several
        networks (a ``label`` column) depth is normalized to 0..1 so networks of different
        depth line up.
    """
    if axes is None:
        fig = Figure(figsize=(12, 4.5), layout="constrained")
        axes = list(fig.subplots(1, 2))
    else:
        fig = axes[0].figure
    fwd, bwd = axes
    labels = table["label"].unique().tolist() if "label" in table else [None]
    normalize = len(labels) > 1
    for i, label in enumerate(labels):
        df = table if label is None else table[table["label"] == label]
        kind = "block" if (df["kind"] == "block").any() else "layer"
        rows = df[df["kind"] == kind].sort_values("depth")
        if kind == "layer":  # normalization outputs are ~0 mean / unit variance by construction
            rows = rows[~rows["module_type"].astype(str).str.contains("Norm")]
        x = rows["depth"].rank(method="first") - 1
        if normalize:
            x = x / max(len(rows) - 1, 1)
        prefix = f"{label}: " if label is not None else ""
        forward, backward = _signal_lines(rows) if kind == "block" else _signal_lines(
            rows.drop(columns=["stream_rms", "skip_grad_norm"], errors="ignore"))
        for ls, text, values in forward.values():
            fwd.plot(x, values, ls, color=_color(i), marker="o", ms=2.5, label=prefix + text)
        for key, values in backward.items():
            text = ("blocks" if kind == "block" else "conv/linear layers") if key == "output" else \
                "additions: gradient through the skip"
            bwd.plot(x, values, "-" if key == "output" else "-.", color=_color(i), marker="o", ms=2.5,
                     label=prefix + text)
    xlabel = "relative depth (0 = input side, 1 = output side)" if normalize else "block (or layer) index, forward order"
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.set_yscale("log")
        ax.autoscale_view()
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fwd.set_title("forward: signal propagation")
    bwd.set_title("backward: gradient reaching each output (or addition)")
    if title:
        fig.suptitle(title)
    return fig
