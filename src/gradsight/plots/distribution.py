"""Distributions over time: quantile bands across layers, update ratios, non-finite steps."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradsight.display import CMAP, NONFINITE_COLOR, PALETTE, plural, short_label
from gradsight.plots._figure import mark_nonfinite_x, new_axes, no_data, styled
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
from gradsight.store.view import view_of

#: The customary healthy size of one update relative to the weights (Karpathy's "update:data ratio").
UPDATE_RATIO_REFERENCE = 1e-3


@styled
def quantile_bands(
    data: RunLike,
    stat: str = DEFAULT_STAT,
    *,
    level: str = "layer",
    role: Roles = DEFAULT_ROLES,
    quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
    ax: Axes | None = None,
    title: str | None = None,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    highlight: bool = True,
) -> Figure:
    """The spread of ``stat`` across layers at each step: nested quantile bands and the median.

    Args:
        data: a ``Run``, run directory or long frame.
        stat: the statistic.
        level: ``layer``, ``param`` or a module level.
        role: the layers by role (default: weighted layers and the head; ``None``: all).
        quantiles: an odd number of increasing quantiles; outer pairs become bands,
            the middle one the line (default 5/25/50/75/95%).
        ax: draw into these axes (default: a new figure).
        title: the title.
        max_steps: at most this many evenly spaced steps.
        highlight: also draw the first and the last layer, to see which end drifts.

    Returns:
        The figure; red triangles on top mark steps where any gradient was non-finite.
    """
    qs = sorted(quantiles)
    if len(qs) % 2 == 0:
        raise ValueError("quantiles must be an odd number of values (pairs of bands and a middle line)")
    data = as_view(data, max_steps)
    role = view_roles(data, role, level)
    m = layer_matrix(data, stat, level=level, role=role, max_steps=max_steps)  # steps x names
    fig, ax = new_axes(ax, (9.0, 4.2))
    ax.set_title(title or f"{stat} across {role_label(role)} over training: {run_label(data)}")
    if m.empty:
        no_data(ax, f"no {stat} recorded at level {level!r}")
        return fig
    steps = np.asarray(m.index, dtype=float)
    vals = positive(m.to_numpy())
    with np.errstate(all="ignore"):
        q = np.nanquantile(vals, qs, axis=1) if np.isfinite(vals).any() else None
    if q is None:
        no_data(ax, f"no positive finite {stat} values")
        return fig
    k = len(qs) // 2
    base = PALETTE[0]
    for i in range(k):
        alpha = 0.15 + 0.2 * i / max(1, k - 1)
        ax.fill_between(steps, q[i], q[-1 - i], color=base, alpha=alpha, lw=0,
                        label=f"{qs[i]:.0%}–{qs[-1 - i]:.0%} of layers")
    ax.plot(steps, q[k], color=base, lw=1.8, label=f"median ({qs[k]:.0%})")
    if highlight and m.shape[1] > 1:
        ax.plot(steps, vals[:, 0], color=PALETTE[1], lw=1.0, ls="--", label=f"first: {short_label(m.columns[0])}")
        ax.plot(steps, vals[:, -1], color=PALETTE[2], lw=1.0, ls="--", label=f"last: {short_label(m.columns[-1])}")
    if stat.startswith("grad"):
        ev = nonfinite_events(data, level=level)
        mark_nonfinite_x(ax, sorted(ev["step"].unique()) if len(ev) else [])
    ax.set_yscale("log")
    ax.autoscale_view()
    ax.set_xlabel("step")
    ax.set_ylabel(f"{stat} (log scale)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the plot: the bands fill it
    return fig


@styled
def update_ratio(
    data: RunLike,
    *,
    stat: str = "update_ratio",
    level: str = "layer",
    role: Roles = DEFAULT_ROLES,
    reference: float | None = UPDATE_RATIO_REFERENCE,
    ax: Axes | None = None,
    title: str | None = None,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    cmap: str = CMAP,
) -> Figure:
    """``‖Δw‖/‖w‖`` of every layer over training, one line per layer coloured by depth.

    Args:
        data: a ``Run``, run directory or long frame (recorded with ``optimizer=``).
        stat: the statistic (default ``update_ratio``).
        level: ``layer`` or ``param``.
        role: the layers by role (default: weighted layers and the head; ``None``: all).
        reference: a dashed reference line (default 1e-3, the customary healthy
            update size); None for none.
        ax: draw into these axes.
        title: the title.
        max_steps: at most this many evenly spaced steps.
        cmap: colour map for depth (first layer dark, last bright).

    Returns:
        The figure, with a colour bar for layer depth.
    """
    data = as_view(data, max_steps)
    role = view_roles(data, role, level)
    m = layer_matrix(data, stat, level=level, role=role, max_steps=max_steps)  # steps x names
    fig, ax = new_axes(ax, (9.0, 4.2))
    ax.set_title(title or f"{stat} per layer ({role_label(role)}): {run_label(data)}")
    if m.empty:
        no_data(ax, f"no {stat} recorded (watch the model with optimizer=...)")
        return fig
    steps = np.asarray(m.index, dtype=float)
    cm = matplotlib.colormaps[cmap]
    n = m.shape[1]
    vals = positive(m.to_numpy())
    measured = ~np.isnan(m.to_numpy(dtype=float))  # NaN: not measured at that step; 0 or inf: a gap
    lw = 1.1 if n <= 30 else 0.7 if n <= 150 else 0.4
    for i in range(n):
        # a layer measured at some of the steps only (rotating snapshots): its line joins its own values
        shown = measured[:, i]
        ax.plot(steps[shown], vals[shown, i], color=cm(i / max(1, n - 1)), lw=lw, alpha=0.9 if n <= 30 else 0.6)
    if reference is not None:
        ax.axhline(reference, color="#222222", ls="--", lw=1.2, label=f"reference {reference:g}")
        ax.legend(loc="upper right", frameon=True, framealpha=0.85)
    ax.set_yscale("log")
    ax.autoscale_view()
    ax.set_xlabel("step")
    ax.set_ylabel(f"{stat} (log scale)")
    sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, max(1, n - 1)), cmap=cm)
    cb = fig.colorbar(sm, ax=ax, pad=0.01, fraction=0.04)
    cb.set_label("layer depth (0 = first)")
    return fig


@styled
def nonfinite(
    data: RunLike,
    stat: str = "grad_norm",
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """The model's ``stat`` over all recorded steps, with a red marker where any gradient
    was non-finite (NaN/Inf), annotated with the first layer hit.

    Args:
        data: a ``Run`` or run directory.
        stat: model-level statistic to draw (default ``grad_norm``).
        ax: draw into these axes.
        title: the title.
    """
    run = view_of(data)
    fig, ax = new_axes(ax, (9.0, 3.6))
    ax.set_title(title or f"non-finite gradients: {run.name}")
    model = run.totals[(run.totals["level"] == "model") & (run.totals["stat"] == stat)]
    if model.empty:
        no_data(ax, f"no model-level {stat} recorded")
        return fig
    steps = model["step"].to_numpy(dtype=float)
    ax.plot(steps, positive(model["value"].to_numpy()), color=PALETTE[0], lw=1.0, label=f"model {stat}")
    events = nonfinite_events(run, level="layer")
    if len(events):
        bad = sorted(events["step"].unique())
        for s in bad[:200]:
            ax.axvline(s, color=NONFINITE_COLOR, lw=0.8, alpha=0.6)
        mark_nonfinite_x(ax, bad, label=f"NaN/Inf gradients at {plural(len(bad), 'step')}")
        first = events.iloc[0]
        ax.annotate(f"first at step {int(first['step'])}: {short_label(str(first['name']))}",
                    xy=(first["step"], 1.0), xycoords=("data", "axes fraction"), xytext=(6, -14),
                    textcoords="offset points", color=NONFINITE_COLOR, fontsize=8)
    else:
        ax.text(0.99, 0.95, "no non-finite gradients", transform=ax.transAxes, ha="right", va="top",
                color="#555555")
    ax.set_yscale("log")
    ax.autoscale_view()
    ax.set_xlabel("step")
    ax.set_ylabel(f"{stat} (log scale)")
    ax.legend(loc="best", frameon=True, framealpha=0.85)
    return fig
