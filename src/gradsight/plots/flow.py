"""Gradient flow: a statistic by layer in forward order, several steps overlaid.

The lecture's ``plot_gradients`` done right: layers (not parameter indices) on the
x axis in the order the forward pass runs them, named; a log y axis, on which a
vanishing gradient is a slope rather than a line glued to zero; several steps of
training overlaid, over the median and the 5-95% range across all (displayed) steps.
By default the weighted layers and the head, size-normalised (``grad_rms``): norm
layers, whose scale and shift gradients live on another scale, would zigzag the line.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradsight.display import NONFINITE_COLOR, is_share, plural
from gradsight.plots._figure import layer_ticks, new_axes, no_data, styled
from gradsight.store.query import (
    DEFAULT_MAX_STEPS,
    DEFAULT_ROLES,
    DEFAULT_STAT,
    RunLike,
    Roles,
    as_view,
    layer_matrix,
    nonfinite_events,
    positive,
    run_label,
    step_sample,
    view_roles,
)
from gradsight.store.roles import role_label

#: Steps a gradient-flow figure overlays unless told otherwise (evenly spaced, first and last included).
OVERLAID_STEPS = 5


@styled
def flow(
    data: RunLike,
    stat: str = DEFAULT_STAT,
    *,
    steps: Sequence[int] | None = None,
    n_steps: int = OVERLAID_STEPS,
    level: str = "layer",
    role: Roles = DEFAULT_ROLES,
    ax: Axes | None = None,
    title: str | None = None,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    max_labels: int = 40,
) -> Figure:
    """``stat`` by layer (forward order, log scale; a share from 0 to 1) at several steps of training.

    Args:
        data: a ``Run``, run directory or long frame (``Run.frame()``).
        stat: the statistic, e.g. ``grad_norm``, ``grad_rms``, ``update_ratio``, or
            an activation statistic at ``level="module"``.
        steps: the steps to overlay (default: ``n_steps`` evenly spaced ones of the
            steps shown, first and last included, as the report overlays them).
        n_steps: how many steps to overlay when ``steps`` is not given.
        level: ``layer``, ``param`` or a module level such as ``module``/``block``.
        role: the layers to show by role (default: weighted layers and the head;
            ``None``: all, see :func:`gradsight.store.query.view_roles`).
        ax: draw into these axes (default: a new figure).
        title: the title (default: ``"<stat> by layer: <run>"``).
        max_steps: the median and 5-95% band use at most this many evenly spaced steps.
        max_labels: at most this many layer names on the x axis.

    Returns:
        The figure. Layers whose value was non-finite at an overlaid step get a red
        triangle on the top edge.
    """
    data = as_view(data, max_steps)
    role = view_roles(data, role, level)
    band = layer_matrix(data, stat, level=level, role=role, max_steps=max_steps)  # steps x names
    fig, ax = new_axes(ax, (min(16.0, max(6.5, 0.22 * band.shape[1] + 3)), 4.6))
    ax.set_title(title or f"{stat} by layer: {run_label(data)}")
    if band.empty:
        no_data(ax, f"no {stat} recorded at level {level!r}")
        return fig
    names = list(band.columns)
    x = np.arange(len(names))
    if steps is None:
        sel = band.loc[step_sample(list(band.index), n_steps)]
    else:
        sel = layer_matrix(data, stat, level=level, role=role, steps=list(steps)).reindex(columns=names)

    share = is_share(stat)  # a share of a whole: a linear axis from 0, its zeros drawn

    def shown(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        return np.where(np.isfinite(values), values, np.nan) if share else positive(values)

    vals = shown(band.to_numpy())
    with np.errstate(all="ignore"):
        if np.isfinite(vals).any():
            lo, med, hi = (np.nanquantile(vals, q, axis=0) for q in (0.05, 0.5, 0.95))
            ax.fill_between(x, lo, hi, color="#bdbdbd", alpha=0.35, lw=0,
                            label=f"5–95% over {band.shape[0]} steps")
            ax.plot(x, med, color="#333333", lw=2.0, label="median over steps", zorder=3)
    cmap = matplotlib.colormaps["plasma"]
    overlaid = list(sel.index)
    for i, step in enumerate(overlaid):
        y = sel.loc[step].to_numpy(dtype=float)
        color = cmap(0.1 + 0.75 * i / max(1, len(overlaid) - 1))
        ax.plot(x, shown(y), marker="o", ms=3, lw=1.1, color=color, label=f"step {step}", zorder=4)
        bad = ~np.isfinite(y) & ~np.isnan(y)
        if bad.any():
            ax.scatter(x[bad], np.ones(bad.sum()), transform=ax.get_xaxis_transform(), marker="v", s=30,
                       color=NONFINITE_COLOR, clip_on=False, zorder=5)
    events = nonfinite_events(data, level=level) if stat.startswith("grad") else None
    if events is not None and len(events):
        pos = {n: i for i, n in enumerate(names)}
        xs = sorted({pos[n] for n in events["name"] if n in pos})
        ax.scatter(xs, np.ones(len(xs)), transform=ax.get_xaxis_transform(), marker="v", s=30,
                   color=NONFINITE_COLOR, clip_on=False, zorder=5,
                   label=f"non-finite ({plural(events['step'].nunique(), 'step')})")
    if share:
        ax.set_ylim(0.0, 1.0)
        ax.set_ylabel(f"{stat} (share)")
    else:
        ax.set_yscale("log")
        ax.autoscale_view()
        ax.set_ylabel(f"{stat} (log scale)")
    ax.set_xlabel(f"{role_label(role)}, in forward order (input → output)")
    layer_ticks(ax, names, max_labels=max_labels)
    # beside the axes, never over the lines (with up to a dozen overlaid steps "best" has no free spot)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8)
    return fig
