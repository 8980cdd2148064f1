"""Several runs on shared axes: gradient flow against normalized depth, and depth sweeps.

With depth normalized to [0, 1] (first layer 0, last layer 1) a 20-layer and a
56-layer network line up, so a plain and a residual family at several depths can
be read off one figure. The depth sweep reduces each run to one number, the ratio
of the first layer's to the last layer's statistic, and draws it against depth per
family: a plain network's vanishing gradient is a ratio falling with depth.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradsight.plots._figure import new_axes, no_data, styled, tidy_log_axis
from gradsight.plots.style import PALETTE, family_looks
from gradsight.store.query import family_and_depth, first_last_ratio, layer_profile, open_data
from gradsight.store.reader import Run

Runs = Union[Sequence[Union[Run, str, Path]], Mapping[str, Union[Run, str, Path]]]


def _runs(runs: Runs) -> list[tuple[str, Run]]:
    if isinstance(runs, Mapping):
        return [(str(k), open_data(v)) for k, v in runs.items()]
    opened = [open_data(r) for r in runs]
    return [(r.name, r) for r in opened]


def _families(named: list[tuple[str, Run]], family: Callable[[Run], tuple[str, int]] | None
              ) -> list[tuple[str, Run, str, int]]:
    out = []
    for label, run in named:
        fam, depth = (family or family_and_depth)(run)
        out.append((label, run, fam, depth))
    return out


@styled
def compare(
    runs: Runs,
    stat: str = "grad_norm",
    *,
    level: str = "layer",
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
            gets one colour, deeper members a darker shade.
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
    fams = list(dict.fromkeys(e[2] for e in entries))
    entries = sorted(entries, key=lambda e: (fams.index(e[2]), e[3]))
    looks = family_looks([(fam, depth) for _, _, fam, depth in entries])
    drawn = 0
    for (label, run, fam, depth), (color, style) in zip(entries, looks, strict=True):
        prof = layer_profile(run, stat, level=level, agg=agg, step=step)
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
    tidy_log_axis(ax)
    ax.set_ylabel(f"{stat} (log scale)")
    ax.set_xlabel("relative depth (0 = first layer, 1 = last)" if normalize_depth else "layer index")
    ax.legend(loc="best", ncols=2 if drawn > 4 else 1, frameon=True, framealpha=0.85)
    return fig


@styled
def depth_sweep(
    runs: Runs,
    stat: str = "grad_norm",
    *,
    level: str = "layer",
    agg: str = "median",
    family: Callable[[Run], tuple[str, int]] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """First-layer / last-layer ratio of ``stat`` against depth, one line per family.

    The ratio is :func:`gradsight.store.query.first_last_ratio`: per step, the first
    layer's value over the last layer's, reduced over the sampled steps by ``agg``.
    A ratio near 1 means gradients reach the first layer as strongly as the last;
    far below 1, they vanish on the way back; far above, they explode.

    Args:
        runs: runs or run directories, or a mapping label -> run.
        stat: the statistic.
        level: ``layer`` or a module level.
        agg: ``median`` (default), ``mean``, ``max`` or ``min`` over steps.
        family: ``run -> (family, depth)``; default from the run's config.
        ax: draw into these axes.
        title: the title.
    """
    entries = _families(_runs(runs), family)
    fig, ax = new_axes(ax, (6.5, 4.4))
    ax.set_title(title or f"first / last layer {stat} vs depth")
    rows = [(fam, depth, first_last_ratio(run, stat, level=level, agg=agg)) for _, run, fam, depth in entries]
    df = pd.DataFrame(rows, columns=["family", "depth", "ratio"]).dropna()
    df = df[df["ratio"] > 0]
    if df.empty:
        no_data(ax, f"no {stat} recorded in these runs")
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
    tidy_log_axis(ax)
    ax.set_xlabel("depth (layers)")
    ax.set_ylabel(f"{stat}: first layer / last layer")
    depths = sorted(df["depth"].unique())
    ax.set_xticks(depths, [str(int(d)) for d in depths])
    ax.legend(loc="best", frameon=True, framealpha=0.85)
    return fig
