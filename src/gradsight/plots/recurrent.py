"""Gradient flow through time: ``‖∂L/∂h_t‖`` per time step of a recurrent layer's output
sequence, and the gain per step of the gradient through the recurrence.

The classic picture of vanishing and exploding gradients in recurrent networks (Pascanu,
Mikolov and Bengio 2013, "On the difficulty of training recurrent neural networks") is the
gradient that reaches each time step's hidden state through the recurrence. A fused
``nn.LSTM``/``GRU``/``RNN`` keeps that inside its kernel: what the hooks see at each step's
output is what the rest of the model sends there (the loss's own term at each step of a
language model; the last step only in a classifier reading it). The figure draws that, and
writes on it the gain per time step of the gradient through the recurrence that the
through-time probe measures (``time_grad_gain``: below 1 it vanishes geometrically over the
sequence, above 1 it explodes). Recorded with ``gs.watch(..., through_time=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradsight.display import display_name
from gradsight.instrument.recurrent import TIME_GAIN_REVERSE_STAT, TIME_GAIN_STAT, TIME_STEPS_STAT, time_index
from gradsight.plots._figure import new_axes, no_data, styled
from gradsight.plots.flow import OVERLAID_STEPS
from gradsight.store.query import (
    DEFAULT_MAX_STEPS,
    RunLike,
    as_view,
    positive,
    run_label,
    step_sample,
)
from gradsight.store.schema import Level


def through_time_matrix(data: RunLike, module: str | None = None, *, steps: str | Sequence[int] = "sample"
                        ) -> tuple[str | None, pd.DataFrame]:
    """The recorded ``‖∂L/∂h_t‖`` of one recurrent module: ``(module, steps x t)``.

    Args:
        data: a ``Run``, run directory or view.
        module: the recurrent module's name (default: the first with values, in forward order).
        steps: ``"sample"`` (the view's evenly spaced steps), ``"all"`` or these steps.

    Returns:
        The module's name (None when the run holds none) and a frame with one row per step
        and one column per time step ``t = 0, 1, ...`` (NaN where a step's sequence was shorter).
    """
    view = as_view(data)
    stats = sorted((t, s) for s in view.stats(Level.MODULE) if (t := time_index(s)) is not None)
    tables = view.matrices([(Level.MODULE, s) for _, s in stats], steps=steps)
    names = list(dict.fromkeys(n for m in tables.values() for n in m.columns))
    if module is None:
        module = names[0] if names else None
    columns = {t: tables[(Level.MODULE, s)][module] for t, s in stats
               if module is not None and module in tables[(Level.MODULE, s)].columns}
    frame = pd.DataFrame(columns).sort_index() if columns else pd.DataFrame()
    return module, frame


def through_time_gain(data: RunLike, module: str, step: int) -> str:
    """The gain per time step of the gradient through ``module``'s recurrence at ``step``, in
    words (``""`` when the run does not hold it): ``through the recurrence: x0.61 per time
    step, x1.4e-07 over its 32 steps`` (and the reverse direction's)."""
    view = as_view(data)
    stats = (TIME_GAIN_STAT, TIME_GAIN_REVERSE_STAT, TIME_STEPS_STAT)
    tables = view.matrices([(Level.MODULE, s) for s in stats if s in view.stats(Level.MODULE)], steps=[step])
    value = {s: float(t.loc[step, module]) for (_, s), t in tables.items()
             if module in t.columns and step in t.index and np.isfinite(t.loc[step, module])}
    if TIME_GAIN_STAT not in value:
        return ""
    steps = value.get(TIME_STEPS_STAT)
    parts = []
    for stat, which in ((TIME_GAIN_STAT, ""), (TIME_GAIN_REVERSE_STAT, " (reverse direction)")):
        if stat in value:
            over = f", x{value[stat] ** steps:.2g} over its {steps:.0f} steps" if steps else ""
            parts.append(f"through the recurrence{which}: x{value[stat]:.3g} per time step{over}")
    return f"step {step}: " + "; ".join(parts)


@styled
def through_time(
    data: RunLike,
    module: str | None = None,
    *,
    steps: Sequence[int] | None = None,
    n_steps: int = OVERLAID_STEPS,
    ax: Axes | None = None,
    title: str | None = None,
    max_steps: int | None = DEFAULT_MAX_STEPS,
) -> Figure:
    """The gradient the rest of the model sends to each time step's output, ``‖∂L/∂h_t‖``
    against ``t`` (log scale), at several steps of training, and (written on it, where the
    run holds it) the gain per time step of the gradient through the recurrence at the last
    of them (``time_grad_gain``; Pascanu et al. 2013).

    Args:
        data: a ``Run``, run directory or view recorded with ``gs.watch(..., through_time=True)``.
        module: the recurrent module (``nn.LSTM``/``GRU``/``RNN``) to draw (default: the first).
        steps: the training steps to overlay (default: ``n_steps`` evenly spaced ones, first
            and last included).
        n_steps: how many steps to overlay when ``steps`` is not given.
        ax: draw into these axes (default: a new figure).
        title: the title (default: ``"gradient at each time step's output: <module>, <run>"``).
        max_steps: the steps are chosen among at most this many evenly spaced ones.

    Returns:
        The figure: one line per training step, the norm over the batch and the features
        (both directions of a bidirectional layer) of the gradient of the loss with respect
        to the module's output at time step ``t`` (``output[0][t]``; for ``batch_first``,
        ``output[0][:, t]``).
    """
    view = as_view(data, max_steps)
    module, table = through_time_matrix(view, module, steps="sample" if steps is None else list(steps))
    fig, ax = new_axes(ax, (7.5, 4.4))
    ax.set_title(title or f"gradient at each time step's output: {display_name(module) if module is not None else '?'}, "
                          f"{run_label(view)}")
    if table.empty:
        no_data(ax, "no gradient through time recorded: gs.watch(..., through_time=True) on a recurrent model")
        return fig
    shown = list(table.index) if steps is not None else step_sample(list(table.index), n_steps)
    cmap = matplotlib.colormaps["plasma"]
    t = np.asarray(table.columns, dtype=float)
    for i, step in enumerate(shown):
        color = cmap(0.1 + 0.75 * i / max(1, len(shown) - 1))
        ax.plot(t, positive(table.loc[step].to_numpy(dtype=float)), marker="o", ms=2.5, lw=1.1, color=color,
                label=f"step {step}")
    ax.set_yscale("log")
    ax.autoscale_view()
    ax.set_xlabel("time step t of the output sequence")
    ax.set_ylabel("‖∂L/∂h_t‖ (log scale)")
    gain = through_time_gain(view, module, shown[-1])
    if gain:
        ax.text(0.01, 0.02, gain, transform=ax.transAxes, fontsize=8, va="bottom", ha="left",
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8)
    return fig
