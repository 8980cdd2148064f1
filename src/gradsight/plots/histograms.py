"""Log2 gradient histograms over training: bucket x step, with the ranges of fp16, bf16
and fp8 drawn as lines (``gs.watch(..., histograms=...)``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gradsight.display import (
    CMAP,
    MISSING_COLOR,
    PALETTE,
    display_name,
    plural,
    short_labels,
)
from gradsight.plots._figure import new_axes, no_data, step_ticks, styled
from gradsight.stats.formats import FORMAT_RANGES
from gradsight.store import histograms as store_histograms
from gradsight.store.query import run_label, step_sample
from gradsight.store.schema import Level
from gradsight.store.view import view_of

#: Layers a figure of several layers' histograms shows, at most (:func:`layer_names`).
MAX_LAYERS = 12

#: Line colour of each format's range.
FORMAT_COLORS = dict(zip(FORMAT_RANGES, PALETTE[1:]))


def format_lines(lo: float, hi: float) -> list[tuple[str, float, str]]:
    """``(format, log2 value, edge)`` of the format range edges within ``[lo, hi]`` (log2
    units): ``edge`` is ``"zero"`` where values start to round to 0 (at or below half the
    smallest subnormal) or ``"max"`` at the largest finite value."""
    out = []
    for fmt, rng in FORMAT_RANGES.items():
        for value, edge in ((math.log2(rng.smallest) - 1, "zero"), (math.log2(rng.largest), "max")):
            if lo <= value <= hi:
                out.append((fmt, value, edge))
    return out


@styled
def log2_histogram(
    data,
    name: str | None = None,
    *,
    level: str = Level.LAYER,
    ax: Axes | None = None,
    title: str | None = None,
    max_steps: int | None = 200,
    cmap: str = CMAP,
) -> Figure:
    """The log2-magnitude histogram of one layer's (or the model's) gradient over training.

    Args:
        data: a ``Run``, a run directory, or a frame of ``Run.histograms()``.
        name: the layer (default: the model, ``level='model'``).
        level: ``layer`` or ``model``.
        ax: draw into these axes (default: a new figure).
        title: the title (default: the name and the run).
        max_steps: at most this many evenly spaced steps with a histogram.
        cmap: matplotlib colour map.

    Returns:
        The figure: rows are log2 buckets (``2**e <= |g| < 2**(e+1)``), columns steps,
        colour the fraction of the nonzero finite elements in the bucket (log scale);
        dashed lines where each format starts to round values to 0, solid lines at
        its largest finite value.
    """
    if name is None:
        name, level = "", Level.MODEL
    frame = data if hasattr(data, "columns") else view_of(data).histograms(level=level, name=name)
    frame = frame[frame["level"] == level] if "level" in frame else frame
    fig, ax = new_axes(ax, (9.0, 4.6))
    label = display_name(name) if level != Level.MODEL else "model"
    ax.set_title(title or f"log2 |gradient| of {label}" + ("" if hasattr(data, "columns") else f": {run_label(data)}"))
    im = _panel(ax, frame, name, label, max_steps, cmap, norm=None)
    if im is None:
        return fig
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False)
    cb = fig.colorbar(im, ax=ax, pad=0.01, fraction=0.04)
    cb.set_label("fraction of nonzero elements")
    return fig


def _panel(ax: Axes, frame, name: str, label: str, max_steps: int | None, cmap: str, norm: LogNorm | None):
    """Draw one histogram (bucket x step) with the format lines into ``ax``; returns the
    image, or None when ``name`` has no histogram (a note is drawn instead)."""
    steps = step_sample(sorted(int(s) for s in frame.loc[frame["name"] == name, "step"].unique()), max_steps)
    steps, buckets, counts = store_histograms.matrix(frame, name, steps)
    if not buckets:
        no_data(ax, f"no histogram recorded for {label} (gs.watch(..., histograms=True))")
        return None
    totals = counts.sum(0, keepdims=True)
    frac = np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)
    shown = np.where(frac > 0, frac, np.nan)
    if norm is None:
        positive = shown[np.isfinite(shown)]
        norm = LogNorm(max(positive.min(), 1e-9), max(positive.max(), positive.min() * 10))
    cm = matplotlib.colormaps[cmap].with_extremes(bad=MISSING_COLOR)
    im = ax.imshow(shown, aspect="auto", origin="lower", cmap=cm, interpolation="nearest", norm=norm,
                   extent=(-0.5, len(steps) - 0.5, buckets[0], buckets[-1] + 1))
    margin = 3
    ax.set_ylim(buckets[0] - margin, buckets[-1] + 1 + margin)
    for fmt, value, edge in format_lines(buckets[0] - margin, buckets[-1] + 1 + margin):
        ax.axhline(value, color=FORMAT_COLORS[fmt], ls="--" if edge == "zero" else "-", lw=1.3,
                   label=f"{fmt}: rounds to 0 at or below" if edge == "zero" else f"{fmt}: largest value")
    step_ticks(ax, steps)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # bucket exponents
    ax.set_xlabel("step")
    ax.set_ylabel("log2 |g| (bucket e: 2^e <= |g| < 2^(e+1))")
    ax.grid(False)
    return im


def histogram_steps(run) -> list[int]:
    """The steps with a histogram (those of the model's), ascending."""
    return sorted(set(run.histograms(level=Level.MODEL)["step"].tolist()))


def histogram_layers(data, steps: Sequence[int] | None = None) -> list[str]:
    """Every layer with histograms (at the first or last step with one), in forward order;
    ``steps``: the run's :func:`histogram_steps`, when the caller has them."""
    run = view_of(data)
    steps = histogram_steps(run) if steps is None else list(steps)
    have = set(run.histograms(level=Level.LAYER, steps=steps[:1] + steps[-1:])["name"]) if steps else set()
    return [n for n in run.layer_order if n in have]


def layer_names(data, max_layers: int = MAX_LAYERS, steps: Sequence[int] | None = None) -> list[str]:
    """The layers a figure of several layers' histograms shows: :func:`histogram_layers`, at
    most ``max_layers`` of them evenly spaced in forward order, first and last kept (the
    steps' sampler, :func:`gradsight.store.query.step_sample`; :func:`layer_choice` says so)."""
    return step_sample(histogram_layers(data, steps), max_layers)


def layer_choice(shown: int, total: int) -> str:
    """Which layers a figure shows, in words: ``12 of 27 layers, evenly spaced in forward
    order (first and last included)``, or ``all 5 layers``."""
    if shown >= total:
        return f"all {plural(total, 'layer')}" if total != 1 else "1 layer"
    return f"{shown} of {total} layers, evenly spaced in forward order (first and last included)"


@styled
def log2_histograms(data, names: Sequence[str] | None = None, *, max_layers: int = MAX_LAYERS,
                    max_steps: int | None = 200, title: str | None = None, cmap: str = CMAP,
                    cols: int = 3, panel_size: tuple[float, float] = (4.6, 3.1)) -> Figure:
    """:func:`log2_histogram` of several layers, one panel each, in forward order (default:
    :func:`layer_names`, at most ``max_layers`` evenly spaced layers with histograms, and
    the title says which), at most ``max_steps`` evenly spaced steps with a histogram (only
    those are read); up to ``cols`` panels per row, each ``panel_size`` inches (the figure
    grows with the rows), one colour scale (fraction of nonzero elements, 1e-6 to 1) and
    one legend. Panel titles are :func:`gradsight.display.short_labels` of the names."""
    run = view_of(data)
    recorded = histogram_steps(run)
    choice = None
    if names is None:
        names = layer_names(run, max_layers, recorded)
        choice = layer_choice(len(names), len(histogram_layers(run, recorded)))
    names = list(names)
    steps = step_sample(recorded, max_steps)
    frame = run.histograms(level=Level.LAYER, name=names, steps=steps) if names else None
    n = max(1, len(names))
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    width, height = panel_size
    fig = Figure(figsize=(width * cols + 1.6, height * rows + 0.9), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False)
    axes = list(grid.ravel())
    if not names:
        no_data(axes[0], "no histograms recorded (gs.watch(..., histograms=True))")
        return fig
    for ax in axes[len(names):]:
        ax.set_visible(False)
    # one colour scale for every panel: the colours compare across layers
    norm = LogNorm(1e-6, 1.0)
    image, lines = None, {}
    for i, (name, label, ax) in enumerate(zip(names, short_labels(names, 40), axes)):
        ax.set_title(label, fontsize=9)
        im = _panel(ax, frame, name, display_name(name), max_steps, cmap, norm)
        image = image or im
        for handle, text in zip(*ax.get_legend_handles_labels()):
            lines.setdefault(text, handle)
        ax.set_ylabel("" if i % cols else "log2 |g| bucket")  # one panel's full label: log2_histogram
        if i < len(names) - cols:
            ax.set_xlabel("")
    if image is not None:
        cb = fig.colorbar(image, ax=axes[:len(names)], pad=0.01, fraction=0.03, shrink=0.9)
        cb.set_label("fraction of nonzero elements")
    if lines:
        fig.legend(list(lines.values()), list(lines.keys()), loc="outside lower center",
                   ncol=min(3, len(lines)), fontsize=8, frameon=False)
    fig.suptitle(title or f"log2 |gradient| per layer: {run_label(run)}" + (f" ({choice})" if choice else ""))
    return fig
