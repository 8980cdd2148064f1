"""The gradient noise scale over training against the batch size used (``noise_scale=``)."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradsight.display import PALETTE
from gradsight.plots._figure import new_axes, no_data, styled
from gradsight.stats.noise_scale import FAR_FACTOR
from gradsight.store.query import RunLike, as_view, positive, run_label
from gradsight.store.schema import Level


def noise_unit(meta: dict) -> str:
    """What a run's noise scale counts: ``samples`` when ``noise_scale=`` gave the micro-batch
    size, else ``micro-batches`` (of one rank)."""
    info = meta.get("noise_scale") or {}
    return "samples" if info.get("micro_batch_size") else "micro-batches"


@styled
def noise_scale(data: RunLike, *, ax: Axes | None = None, title: str | None = None,
                factor: float = FAR_FACTOR) -> Figure:
    """The model's gradient noise scale ``B_simple`` (``gns``, the ratio of moving averages of
    ``tr(Σ)`` and ``|G|²``) over the recorded steps, the batch size of each step (``gns_batch``)
    and the band within ``factor`` of it, on a log scale.

    Args:
        data: a ``Run``, run directory or view (recorded with ``noise_scale=``).
        ax: draw into these axes.
        title: the title.
        factor: the band around the batch size (default :data:`FAR_FACTOR`, the doctor's).

    Returns:
        The figure; steps where ``|G|²``'s average is not positive (the noise scale is not
        measurable yet) leave a gap.
    """
    view = as_view(data, None)
    gns = view.matrix(Level.MODEL, "gns", steps="all")
    batch = view.matrix(Level.MODEL, "gns_batch", steps="all")
    fig, ax = new_axes(ax, (9.0, 4.2))
    ax.set_title(title or f"gradient noise scale: {run_label(view)}")
    if gns.empty or batch.empty:
        no_data(ax, "no noise scale recorded (watch the model with noise_scale=True and accumulate gradients, "
                    "or run under DDP)")
        return fig
    unit = noise_unit(view.meta)
    steps = np.asarray(gns.index, dtype=float)
    b = batch.iloc[:, 0].reindex(gns.index).to_numpy(dtype=float)
    ax.fill_between(steps, b / factor, b * factor, color=PALETTE[0], alpha=0.12, lw=0,
                    label=f"within {factor:g}x of the batch size")
    ax.plot(steps, b, color=PALETTE[0], lw=1.2, ls="--", label=f"batch size ({unit})")
    ax.plot(steps, positive(gns.iloc[:, 0].to_numpy()), color=PALETTE[1], lw=1.6, label="noise scale B_simple")
    ax.set_yscale("log")
    ax.autoscale_view()
    ax.set_xlabel("step")
    ax.set_ylabel(f"{unit} (log scale)")
    ax.legend(loc="best", frameon=True, framealpha=0.85)
    return fig


__all__ = ["noise_scale", "noise_unit"]
