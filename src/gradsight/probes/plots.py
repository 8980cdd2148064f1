"""Figures for the probes: shattered gradients (Balduzzi et al. 2017, Fig. 1) and path lengths
(Veit et al. 2016, Fig. 6). Every function draws on given axes or a new figure and returns the
figure; none calls ``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradsight.probes.paths import PathLengthResult
from gradsight.probes.shattering import ShatteringResult

__all__ = ["plot_autocorrelation", "plot_gradient", "plot_path_lengths", "plot_shattering"]


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    return Figure(figsize=figsize, layout="constrained").add_subplot()


def plot_gradient(result: ShatteringResult, ax: Axes | None = None, **line_kw: object) -> Figure:
    """dy/dx against x, as a line (the top row of Balduzzi et al.'s Fig. 1)."""
    ax = _axes(ax, (4, 3))
    ax.plot(result.x.numpy(), result.grad.numpy(), **{"lw": 0.8, **line_kw})
    ax.set_xlabel("input x")
    ax.set_ylabel("dy/dx")
    return ax.figure


def plot_autocorrelation(
    result: ShatteringResult, ax: Axes | None = None, max_lag: int = 50, **line_kw: object
) -> Figure:
    """Autocorrelation of dy/dx at lags ``0..max_lag``; a grey band marks +-2/sqrt(n), the range
    that 95% of white noise's autocorrelations fall in."""
    ax = _axes(ax, (4, 3))
    lags = min(max_lag, len(result.autocorrelation) - 1)
    ax.plot(range(lags + 1), result.autocorrelation[: lags + 1].numpy(), **{"lw": 1.0, **line_kw})
    band = 2.0 / len(result.grad) ** 0.5
    ax.axhspan(-band, band, color="0.85", zorder=0)
    ax.axhline(0.0, color="0.4", lw=0.5)
    ax.set_ylim(-0.55, 1.05)
    ax.set_xlabel("lag")
    ax.set_ylabel("autocorrelation")
    return ax.figure


def plot_shattering(
    results: Mapping[str, ShatteringResult], axes: Sequence[Sequence[Axes]] | None = None,
    max_lag: int = 50,
) -> Figure:
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
        color = f"C{column}"
        top, bottom = axes[0][column], axes[1][column]
        plot_gradient(result, top, color=color)
        plot_autocorrelation(result, bottom, max_lag=max_lag, color=color)
        top.set_title(f"{name}\nlag-1 r = {result.lag1:.2f}", fontsize=9)
        if column:
            top.set_ylabel("")
            bottom.set_ylabel("")
    return axes[0][0].figure


def plot_path_lengths(
    result: PathLengthResult, axes: Sequence[Axes] | None = None, title: str | None = None
) -> Figure:
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
    dist_ax.bar(k, result.fraction.numpy(), width=0.9, color="C0")
    dist_ax.set_xlabel("path length k")
    dist_ax.set_ylabel("share of paths  C(n,k) / 2^n")
    dist_ax.set_title("(a) distribution of path lengths", fontsize=10)

    lo = result.magnitudes.min(dim=1).values.numpy()
    hi = result.magnitudes.max(dim=1).values.numpy()
    mag_ax.fill_between(k, lo, hi, color="C1", alpha=0.25, lw=0, label="range over samples")
    mag_ax.plot(k, result.magnitude.numpy(), "o-", ms=3, color="C1", label="mean")
    mag_ax.set_yscale("log")
    mag_ax.set_xlabel("path length k")
    mag_ax.set_ylabel("gradient magnitude at input")
    mag_ax.set_title("(b) gradient magnitude per path", fontsize=10)
    mag_ax.legend(fontsize=8)

    effective = result.effective / result.effective.sum()
    first, last = result.effective_range(0.9)
    span = f"90%: k = {first}..{last}"
    eff_ax.axvspan(first - 0.5, last + 0.5, color="0.9", zorder=0, label=span)
    eff_ax.bar(k, effective.numpy(), width=0.9, color="C2")
    peak = result.peak_length
    eff_ax.axvline(peak, color="k", lw=0.8, ls="--", label=f"peak k = {peak}")
    eff_ax.set_xlabel("path length k")
    eff_ax.set_ylabel("share of total (magnitude x share)")
    eff_ax.set_title("(c) gradient per path length", fontsize=10)
    eff_ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xlim(-0.5, result.n_blocks + 0.5)
    fig = dist_ax.figure
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
