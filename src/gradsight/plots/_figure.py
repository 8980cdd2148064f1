"""Figure plumbing shared by the plot modules: new figures, the house style, layer ticks."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradsight.plots.style import NONFINITE_COLOR, fmt_value, short_labels

F = TypeVar("F", bound=Callable[..., Figure])

#: rcParams every gradsight figure is drawn with.
STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.grid.which": "major",
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.6,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "image.interpolation": "nearest",
}


def styled(fn: F) -> F:
    """Run a plot function inside the house style (``matplotlib.rc_context(STYLE)``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """``ax`` and its figure, or a new figure (not registered with pyplot) and axes."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def layer_ticks(ax: Axes, names: Sequence[str], *, axis: str = "x", max_labels: int = 40,
                max_len: int = 28) -> None:
    """Readable layer names on an axis: shortened, rotated on x, thinned to ``max_labels``."""
    n = len(names)
    step = max(1, math.ceil(n / max_labels))
    pos = np.arange(0, n, step)
    labels = [short_labels(names, max_len)[i] for i in pos]
    size = 8 if n <= 25 else 7 if n <= 45 else 6.5
    if axis == "x":
        ax.set_xticks(pos, labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=size)
        ax.set_xlim(-0.5, n - 0.5)
    else:
        ax.set_yticks(pos, labels, fontsize=size)


def mark_nonfinite_x(ax: Axes, xs: Sequence[float], label: str = "non-finite gradients") -> None:
    """Red triangles along the top edge of ``ax`` at ``xs``."""
    if len(xs) == 0:
        return
    ax.scatter(xs, np.ones(len(xs)), transform=ax.get_xaxis_transform(), marker="v", s=28,
               color=NONFINITE_COLOR, zorder=5, clip_on=False, label=label)


def tidy_log_axis(ax: Axes, axis: str = "y") -> None:
    """On a log axis spanning less than two decades, label ticks as plain numbers
    (``0.3``, ``2``) instead of ``3×10⁻¹``; wider axes keep matplotlib's powers of ten."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if lo <= 0 or hi <= 0 or np.log10(hi / lo) >= 2:
        return
    target = ax.yaxis if axis == "y" else ax.xaxis
    fmt = FuncFormatter(lambda v, _: fmt_value(float(v), 2))
    target.set_major_formatter(fmt)
    target.set_minor_formatter(fmt if np.log10(hi / lo) < 1 else NullFormatter())


def no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#777777")
    ax.set_xticks([])
    ax.set_yticks([])
