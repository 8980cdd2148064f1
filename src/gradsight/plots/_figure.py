"""Figure plumbing shared by the plot modules: new figures, the house style, layer ticks."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import (
    LogFormatter,
    LogFormatterSciNotation,
    LogLocator,
    ScalarFormatter,
)

from gradsight.display import NONFINITE_COLOR, fmt_value, short_labels

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
    """Run a plot function inside the house style (``matplotlib.rc_context(STYLE)``); its log
    axes get at least two labelled ticks (:func:`label_log_axes`) and the text it adds is
    shown as written (:func:`plain_text`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        before = {(id(t), t.get_text()) for fig in _given_figures(args, kwargs) for t in fig.findobj(Text)}
        with matplotlib.rc_context(STYLE):
            fig = fn(*args, **kwargs)
        if isinstance(fig, Figure):
            label_log_axes(fig)
            plain_text(fig, skip=before)
        return fig

    return wrapper  # type: ignore[return-value]


def _given_figures(args: Sequence[Any], kwargs: dict[str, Any]) -> set[Figure]:
    """Figures of the axes passed to a plot function (alone or in a list or array)."""
    found = set()
    stack = [*args, *kwargs.values()]
    while stack:
        item = stack.pop()
        if isinstance(item, Axes):
            found.add(item.figure)
        elif isinstance(item, (list, tuple)) or (isinstance(item, np.ndarray) and item.dtype == object):
            stack.extend(item)
    return found


def plain_text(fig: Figure, skip: set[tuple[int, str]] = frozenset()) -> None:
    """Show every text of ``fig`` as written: no mathtext, so a module or run name with
    ``$...$`` is printed, not parsed as maths (which fails or garbles it). Tick labels set
    from a list of strings (layer names) count as text; those of Matplotlib's numeric
    formatters, which write mathtext (``10^{-3}``), are left alone, and so are texts whose
    ``(id, text)`` is in ``skip`` (unchanged text of a figure the caller passed)."""
    texts = fig.findobj(Text)  # first: listing an axis's children can add ticks
    numeric_ticks = set()
    for axis in fig.findobj(Axis):  # every axes' axes, a secondary axis's too (not in fig.axes)
        for ticks, formatter in ((axis.majorTicks, axis.major.formatter), (axis.minorTicks, axis.minor.formatter)):
            if isinstance(formatter, (ScalarFormatter, LogFormatter)):
                numeric_ticks |= {id(label) for tick in ticks for label in (tick.label1, tick.label2)}
    for text in texts:
        if id(text) not in numeric_ticks and (id(text), text.get_text()) not in skip:
            text.set_parse_math(False)


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
    shortened = short_labels(names, max_len)
    labels = [shortened[i] for i in pos]
    size = 8 if n <= 25 else 7 if n <= 45 else 6.5
    if axis == "x":
        ax.set_xticks(pos, labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=size)
        ax.set_xlim(-0.5, n - 0.5)
    else:
        ax.set_yticks(pos, labels, fontsize=size)


def step_ticks(ax: Axes, steps: Sequence[float], *, max_ticks: int = 8) -> None:
    """Round step numbers (multiples of 1, 2, 5 x 10^k: 0, 20, 40, not 0, 21, 43) on the x axis
    of a figure whose columns are ``steps`` (one column per shown step, ascending), each at
    its place between the columns."""
    from matplotlib.ticker import MaxNLocator

    values = np.asarray(steps, dtype=float)
    if len(values) == 0:
        return
    if len(values) == 1:
        ax.set_xticks([0], [str(int(values[0]))])
        return
    nice = MaxNLocator(nbins=max_ticks, integer=True, steps=[1, 2, 5, 10]).tick_values(values[0], values[-1])
    nice = [v for v in nice if values[0] <= v <= values[-1]]
    pos = np.interp(nice, values, np.arange(len(values)))
    ax.set_xticks(pos, [str(int(v)) for v in nice])


def mark_nonfinite_x(ax: Axes, xs: Sequence[float], label: str = "non-finite gradients") -> None:
    """Red triangles along the top edge of ``ax`` at ``xs``."""
    if len(xs) == 0:
        return
    ax.scatter(xs, np.ones(len(xs)), transform=ax.get_xaxis_transform(), marker="v", s=28,
               color=NONFINITE_COLOR, zorder=5, clip_on=False, label=label)


def log_ticks(lo: float, hi: float, max_ticks: int = 8) -> list[float]:
    """Round tick values of a log axis over ``[lo, hi]`` (``0 < lo < hi``), at least two of
    them inside: powers of ten when two or more fall inside, else 1, 2, 5 x 10^k, else every
    1..9 x 10^k, else round linear steps (an axis spanning a few percent), else the ends.
    The report's script (``report/static.py``, ``logTicks``) keeps the same promise of two."""
    from matplotlib.ticker import MaxNLocator

    if not (0 < lo < hi and math.isfinite(hi)):
        return [v for v in (lo, hi) if v > 0 and math.isfinite(v)][:1]
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mults in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [float(f"{m}e{e}") for e in range(a, b + 1) for m in mults]
        ticks = sorted(v for v in ticks if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9))
        if len(ticks) >= 2:
            every = math.ceil(len(ticks) / max_ticks)
            return ticks[::every]
    linear = [float(v) for v in MaxNLocator(nbins=4, steps=[1, 2, 5, 10]).tick_values(lo, hi) if lo <= v <= hi]
    return linear if len(linear) >= 2 else [lo, hi]


class LogTicks(LogLocator):
    """Major ticks of a log axis, at least two inside the view: Matplotlib's powers of ten
    on an axis spanning two decades or more (it always has two), else :func:`log_ticks`."""

    def tick_values(self, vmin: float, vmax: float) -> Sequence[float]:
        lo, hi = min(vmin, vmax), max(vmin, vmax)
        if lo > 0 and math.isfinite(hi) and math.log10(hi / lo) >= 2:
            return super().tick_values(vmin, vmax)
        return log_ticks(lo, hi)


class LogTickLabels(LogFormatterSciNotation):
    """Labels of :class:`LogTicks`: powers of ten on an axis spanning two decades or more,
    else plain numbers (``0.3``, ``2``, ``1e-05``) with as many digits as it takes to tell
    the ticks apart."""

    def __init__(self) -> None:
        super().__init__()
        self.digits: int | None = None  # None: powers of ten

    def set_locs(self, locs: Sequence[float] | None = None) -> None:
        super().set_locs(locs)
        lo, hi = sorted(self.axis.get_view_interval()) if self.axis is not None else (0.0, 0.0)
        if lo > 0 and math.isfinite(hi) and math.log10(hi / lo) >= 2:
            self.digits = None
            return
        shown = [float(v) for v in (locs if locs is not None else []) if lo <= v <= hi]
        self.digits = next((d for d in range(2, 8) if len({fmt_value(v, d) for v in shown}) == len(shown)), 8)

    def __call__(self, x: float, pos: int | None = None) -> str:
        return super().__call__(x, pos) if self.digits is None else fmt_value(float(x), self.digits)


def label_log_axes(fig: Figure) -> None:
    """At least two labelled ticks on every log axis of ``fig`` (colour bars of a log norm
    included) whose ticks are still Matplotlib's defaults: :class:`LogTicks` labelled by
    :class:`LogTickLabels`, minor ticks unlabelled."""
    from matplotlib.ticker import NullFormatter

    for axis in fig.findobj(Axis):
        if axis.get_scale() != "log" or type(axis.get_major_locator()) is not LogLocator:
            continue
        colorbar = getattr(axis.axes, "_colorbar", None)
        if colorbar is not None and colorbar.long_axis is axis:
            colorbar.locator, colorbar.formatter = LogTicks(), LogTickLabels()
            colorbar.minorformatter = NullFormatter()
        else:
            axis.set_major_locator(LogTicks())
            axis.set_major_formatter(LogTickLabels())
            axis.set_minor_formatter(NullFormatter())


def no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#777777")
    ax.set_xticks([])
    ax.set_yticks([])
