"""Layer x step heatmap: how gradient flow evolves over training, on a log colour scale (shares
such as ``act_saturated`` on a linear one from 0 to 1)."""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from gradsight.display import CMAP, MISSING_COLOR, NONFINITE_COLOR, is_share, plural
from gradsight.plots._figure import layer_ticks, new_axes, no_data, step_ticks, styled
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
    view_roles,
)
from gradsight.store.roles import role_label


@styled
def heatmap(
    data: RunLike,
    stat: str = DEFAULT_STAT,
    *,
    level: str = "layer",
    role: Roles = DEFAULT_ROLES,
    ax: Axes | None = None,
    title: str | None = None,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    cmap: str = CMAP,
    vmin: float | None = None,
    vmax: float | None = None,
    max_labels: int = 45,
) -> Figure:
    """``stat`` of every layer (rows, first layer on top) at every step (columns).

    Args:
        data: a ``Run``, run directory or long frame.
        stat: the statistic.
        level: ``layer``, ``param`` or a module level (``module``, ``block``).
        role: the layers to show by role (default: weighted layers and the head;
            ``None``: all, see :func:`gradsight.store.query.view_roles`).
        ax: draw into these axes (default: a new figure).
        title: the title (default: ``"<stat> over training: <run>"``).
        max_steps: show at most this many evenly spaced recorded steps as columns.
        cmap: matplotlib colour map.
        vmin, vmax: ends of the log colour scale (default: the positive finite data).
        max_labels: at most this many layer names on the y axis.

    Returns:
        The figure. Grey cells: nothing recorded (or zero, on the log scale; a share
        (:func:`~gradsight.display.is_share`) is drawn from 0 to 1 with 0 a colour); red: non-finite values;
        red crosses: layers whose gradient had NaN/Inf elements at a step (found over
        all steps, drawn at the nearest displayed column).
    """
    data = as_view(data, max_steps)
    role = view_roles(data, role, level)
    m = layer_matrix(data, stat, level=level, role=role, max_steps=max_steps)  # steps x names
    names = list(m.columns)
    n_rows = len(names)
    fig, ax = new_axes(ax, (10.0, min(14.0, max(3.2, 0.16 * n_rows + 1.8))))
    ax.set_title(title or f"{stat} over training: {run_label(data)}")
    if m.empty:
        no_data(ax, f"no {stat} recorded at level {level!r}")
        return fig
    values = m.to_numpy(dtype=float).T  # drawn names x steps: layers as rows, first on top
    finite_pos = values[np.isfinite(values) & (values > 0)]
    lo = vmin if vmin is not None else (finite_pos.min() if finite_pos.size else 1e-3)
    hi = vmax if vmax is not None else (finite_pos.max() if finite_pos.size else 1.0)
    if hi <= lo:
        lo, hi = lo / 10, hi * 10
    cm = matplotlib.colormaps[cmap].with_extremes(bad=MISSING_COLOR, under=matplotlib.colormaps[cmap](0.0))
    share = is_share(stat)
    if share:
        shown = np.ma.masked_invalid(values)
        norm = Normalize(0.0 if vmin is None else vmin, 1.0 if vmax is None else vmax)
    else:
        shown, norm = positive(values), LogNorm(lo, hi)
    im = ax.imshow(shown, aspect="auto", cmap=cm, norm=norm, interpolation="nearest")
    inf_mask = np.isinf(values)
    if inf_mask.any():
        rgba = np.zeros((*values.shape, 4))
        rgba[inf_mask] = matplotlib.colors.to_rgba(NONFINITE_COLOR)
        ax.imshow(rgba, aspect="auto", interpolation="nearest")
    steps = np.asarray(m.index, dtype=float)
    if stat.startswith("grad"):
        events = nonfinite_events(data, level=level)
        if len(events):
            row = {n: i for i, n in enumerate(names)}
            ev = events[events["name"].isin(row)]
            cols = np.abs(steps[None, :] - ev["step"].to_numpy(dtype=float)[:, None]).argmin(axis=1)
            ax.scatter(cols, [row[n] for n in ev["name"]], marker="X", s=46, facecolor=NONFINITE_COLOR,
                       edgecolor="white", lw=0.8, label=f"NaN/Inf gradient ({plural(ev['step'].nunique(), 'step')})", zorder=5)
            ax.legend(loc="upper right", frameon=True, framealpha=0.9)
    layer_ticks(ax, names, axis="y", max_labels=max_labels)
    n_cols = len(steps)
    step_ticks(ax, steps)
    ax.set_xlabel("step" + (f" ({n_cols} shown, evenly spaced)" if max_steps and n_cols >= max_steps else ""))
    ax.set_ylabel(f"{role_label(role)} (forward order)")
    ax.grid(False)
    cb = fig.colorbar(im, ax=ax, pad=0.01, fraction=0.04, extend="neither")
    cb.set_label(f"{stat} (share)" if share else f"{stat} (log scale)")
    return fig
