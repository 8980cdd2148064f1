"""Several runs on shared axes: gradient flow against normalized depth, and depth sweeps.

With depth normalized to [0, 1] (first layer 0, last layer 1) a 20-layer and a
56-layer network line up, so a plain and a residual family at several depths can
be read off one figure; by default the weighted layers and the head are drawn, with
``grad_rms``. The depth sweep reduces each run to one number, the ratio of the first
weighted layer's statistic to the last one's (the head left out:
:func:`gradsight.store.query.first_last_ratio`), and draws it against depth per
family: a plain network's vanishing gradient is a ratio falling with depth. Family
and depth come from each run's recorded config only; runs without them are left off
the sweep (the figure says which).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import warnings
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradsight.display import PALETTE, family_looks
from gradsight.plots._figure import new_axes, no_data, styled
from gradsight.store.query import (
    DEFAULT_ROLES,
    DEFAULT_STAT,
    RATIO_DEFINITION,
    Roles,
    family_and_depth,
    first_last_ratio,
    layer_profile,
    run_labels,
    view_roles,
)
from gradsight.store.reader import Run
from gradsight.store.roles import role_label
from gradsight.store.view import RunView, view_of

Runs = Union[Sequence[Union[RunView, Run, str, Path]], Mapping[str, Union[RunView, Run, str, Path]]]


def _runs(runs: Runs) -> list[tuple[str, RunView]]:
    """``(label, view)`` of each run: one view per run, which its reads share."""
    if isinstance(runs, Mapping):
        return [(str(k), view_of(v)) for k, v in runs.items()]
    opened = [view_of(r) for r in runs]
    return list(zip(run_labels(opened), opened))


def _families(named: list[tuple[str, Run]], family: Callable[[Run], tuple[str, int] | None] | None
              ) -> list[tuple[str, Run, str | None, int | None]]:
    """``(label, run, family, depth)``; family and depth None where the run has none recorded."""
    out = []
    for label, run in named:
        found = (family or family_and_depth)(run)
        out.append((label, run, *(found if found is not None else (None, None))))
    return out


@styled
def depth_overlay(
    runs: Runs,
    stat: str = DEFAULT_STAT,
    *,
    level: str = "layer",
    role: Roles = DEFAULT_ROLES,
    agg: str = "median",
    step: int | None = None,
    normalize_depth: bool = True,
    family: Callable[[Run], tuple[str, int]] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """``stat`` by layer for several runs on shared axes.

    Args:
        runs: runs or run directories, or a mapping label -> run.
        stat: the statistic.
        level: ``layer`` or a module level.
        agg: per layer, ``median`` (default), ``mean``, ``max`` or ``min`` over the
            recorded steps; or use ``step``.
        step: the value at this recorded step instead of ``agg`` over steps.
        normalize_depth: x = relative depth in [0, 1] so networks of different depth
            line up; else the layer index.
        family: ``run -> (family, depth)``; default
            :func:`gradsight.store.query.family_and_depth` (the run's config). A family
            gets one colour, deeper members a darker shade; a run without a recorded
            family is drawn in a colour of its own.
        ax: draw into these axes.
        title: the title.
    """
    entries = _families(_runs(runs), family)
    fig, ax = new_axes(ax, (9.0, 4.8))
    when = f"at step {step}" if step is not None else f"{agg} over steps"
    ax.set_title(title or f"{stat} by depth ({when})")
    if not entries:
        no_data(ax, "no runs")
        return fig
    entries = [(label, run, fam if fam is not None else f"({label})", depth or 0) for label, run, fam, depth in entries]
    fams = list(dict.fromkeys(e[2] for e in entries))
    entries = sorted(entries, key=lambda e: (fams.index(e[2]), e[3]))
    looks = family_looks([(fam, depth) for _, _, fam, depth in entries])
    drawn, shown = 0, set()
    for (label, run, fam, depth), (color, style) in zip(entries, looks, strict=True):
        roles = view_roles(run, role, level)
        shown.add(role_label(roles))
        prof = layer_profile(run, stat, level=level, role=roles, agg=agg, step=step)
        if prof.empty:
            continue
        n = len(prof)
        x = np.linspace(0, 1, n) if normalize_depth and n > 1 else np.arange(n)
        ax.plot(x, prof.to_numpy(), color=color, lw=1.6, ls=style, marker="o" if n <= 40 else None, ms=2.5,
                label=f"{label} ({n} layers)")
        drawn += 1
    if not drawn:
        no_data(ax, f"no {stat} recorded in these runs")
        return fig
    ax.set_yscale("log")
    ax.autoscale_view()
    ax.set_ylabel(f"{stat} (log scale)")
    which = " / ".join(sorted(shown))
    ax.set_xlabel(f"relative depth over {which} (0 = first, 1 = last)" if normalize_depth else f"index among {which}")
    ax.legend(loc="best", ncols=2 if drawn > 4 else 1, frameon=True, framealpha=0.85)
    return fig


@styled
def depth_sweep(
    runs: Runs,
    stat: str = DEFAULT_STAT,
    *,
    level: str = "layer",
    agg: str = "median",
    family: Callable[[Run], tuple[str, int] | None] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """First-layer / last-layer ratio of ``stat`` against depth, one line per family.

    The ratio is :func:`gradsight.store.query.first_last_ratio`: per step, the first
    weighted layer's value over the last weighted layer's (forward order; embeddings,
    norm layers and the head left out), reduced over the sampled steps by ``agg``.
    A ratio near 1 means gradients reach the first layer as strongly as the last;
    far below 1, they vanish on the way back; far above, they explode. Runs without
    a recorded family and depth are left out, and a note under the axes names them.

    Args:
        runs: runs or run directories, or a mapping label -> run.
        stat: the statistic.
        level: ``layer`` or a module level.
        agg: ``median`` (default), ``mean``, ``max`` or ``min`` over steps.
        family: ``run -> (family, depth)`` or None; default from the run's config.
        ax: draw into these axes.
        title: the title.
    """
    entries = _families(_runs(runs), family)
    fig, ax = new_axes(ax, (6.5, 4.4))
    ax.set_title(title or f"first / last weighted layer {stat} vs depth")
    left_out = [label for label, _, fam, _ in entries if fam is None]
    notes = ["ratio: " + RATIO_DEFINITION]
    if left_out:
        notes.append(f"left out (no family and depth recorded in their config): {', '.join(left_out)}")
    ax.annotate("\n".join(notes), (0.0, -0.24), xycoords="axes fraction", va="top", fontsize=7,
                color="#555555", wrap=True)
    rows = [(fam, depth, first_last_ratio(run, stat, level=level, agg=agg))
            for _, run, fam, depth in entries if fam is not None]
    df = pd.DataFrame(rows, columns=["family", "depth", "ratio"]).dropna()
    df = df[df["ratio"] > 0]
    if df.empty:
        no_data(ax, "no run has a family and depth recorded" if not rows else f"no {stat} recorded in these runs")
        return fig
    for i, (fam, g) in enumerate(df.groupby("family", sort=False)):
        g = g.groupby("depth", as_index=False)["ratio"].median().sort_values("depth")
        ax.plot(g["depth"], g["ratio"], marker="o", ms=5, lw=1.8, color=PALETTE[i % len(PALETTE)], label=fam)
        for d, r in zip(g["depth"], g["ratio"]):
            ax.annotate(f"{r:.2g}", (d, r), xytext=(4, 4), textcoords="offset points", fontsize=7,
                        color=PALETTE[i % len(PALETTE)])
    ax.axhline(1.0, color="#888888", lw=1.0, ls=":", label="equal (ratio 1)")
    ax.set_yscale("log")
    ax.autoscale_view()
    ax.set_xlabel("depth (as recorded in each run's config)")
    ax.set_ylabel(f"{stat}: first / last weighted layer")
    depths = sorted(df["depth"].unique())
    ax.set_xticks(depths, [str(int(d)) for d in depths])
    ax.legend(loc="best", frameon=True, framealpha=0.85)
    return fig


def compare(*args: Any, **kwargs: Any) -> Figure:
    """Deprecated name of :func:`depth_overlay` (``compare`` also names the training
    comparison, :func:`gradsight.train.compare`, and the ``gradsight compare`` command)."""
    warnings.warn("gradsight.plots.compare is deprecated; use gradsight.plots.depth_overlay",
                  DeprecationWarning, stacklevel=2)
    return depth_overlay(*args, **kwargs)
