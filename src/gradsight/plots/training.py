"""Figures of training runs side by side: gradient flow per run, every run overlaid, training curves.

The lecture's ``plot_gradients`` done right, for runs of :func:`gradsight.train.train`: the x
axis is the network's weighted layers and head (roles ``weighted`` and ``head``: convolutions
and the linear head, the layers that "20" and "56" count) in forward order; the y axis is
logarithmic, so a gradient that shrinks or grows geometrically with depth is a straight slope.
Batch-norm layers are left out: their scale and shift gradients live on another scale and
would zigzag the line.

Runs are read through :mod:`gradsight.store.query`. Every function takes runs (a ``Run`` or a
run directory) and optional axes, and returns the matplotlib ``Figure``; none calls
``plt.show()``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from gradsight.plots._figure import no_data, styled
from gradsight.plots.flow import flow
from gradsight.display import family_looks
from gradsight.store.query import DEFAULT_ROLES, family_and_depth, layer_matrix, positive, run_labels, view_roles
from gradsight.store.reader import Run
from gradsight.store.view import RunSource, RunView, view_of

__all__ = [
    "first_and_late_steps",
    "grad_flow",
    "grad_flow_overlay",
    "save_png",
    "shown_layers",
    "training_curves",
    "weighted_layers",
    "weighted_matrix",
]

def shown_layers(run: RunSource) -> list[str]:
    """Names of the layers depth views show by default (the weighted layers and the head,
    :data:`~gradsight.store.query.DEFAULT_ROLES`; all layers if none) in forward order."""
    view = view_of(run)
    return list(view.layers(role=view_roles(view, DEFAULT_ROLES))["name"])


def weighted_layers(run: RunSource) -> list[str]:
    """Deprecated: :func:`shown_layers` (the name said "weighted" and included the head)."""
    warnings.warn("weighted_layers is deprecated; use shown_layers", DeprecationWarning, stacklevel=2)
    return shown_layers(run)


def weighted_matrix(run: RunSource, stat: str = "grad_norm", steps: Sequence[int] | None = None) -> pd.DataFrame:
    """Deprecated: ``layer_matrix(run, stat, steps=steps, max_steps=None).reindex(columns=shown_layers(run))``."""
    warnings.warn("weighted_matrix is deprecated; use gradsight.store.query.layer_matrix with shown_layers",
                  DeprecationWarning, stacklevel=2)
    view = view_of(run)
    return layer_matrix(view, stat, steps=steps, max_steps=None).reindex(columns=shown_layers(view))


def first_and_late_steps(run: RunView | Run) -> tuple[int, int]:
    """The first recorded step and the last one with a full batch (the end of training).

    When the training set does not divide into batches, an epoch's last batch is smaller and
    its gradient noisier, so for runs of :func:`gradsight.train.train` (whose config says the
    batch size and the number of training samples) such steps are passed over for "late".
    Language models train on windows drawn at random, every batch full, so nothing is skipped.
    """
    steps = list(run.steps if isinstance(run, RunView) else run.steps())
    if not steps:
        raise ValueError(f"run {run.name!r} recorded no gradient steps")
    config = run.config
    per_epoch, num_train = config.get("steps_per_epoch"), config.get("num_train")
    batch_size = (config.get("recipe") or {}).get("batch_size")
    late = steps[-1]
    windows = config.get("input_kind") == "tokens"
    if per_epoch and num_train and batch_size and num_train % batch_size and not windows:
        full = [s for s in steps if (s + 1) % per_epoch]
        late = full[-1] if full else late
    return steps[0], late


@contextmanager
def _opened(runs: Sequence[RunSource]) -> Iterator[list[RunView]]:
    """A view of each run, those given as directories opened here and closed on exit."""
    with ExitStack() as stack:
        yield [stack.enter_context(view_of(run)) for run in runs]


def grad_flow(run: RunSource, *, stat: str = "grad_norm", steps: Sequence[int] | None = None,
              ax: Axes | None = None, title: str | None = None) -> Figure:
    """:func:`gradsight.plots.flow` over the weighted layers and head of a training run: ``stat``
    at the first and the late step (or ``steps``) over the median and 5-95% range of the
    displayed steps.

    Returns:
        The figure.
    """
    with _opened([run]) as (view,):
        shown = list(steps) if steps is not None else sorted(set(first_and_late_steps(view)))
        return flow(view, stat, steps=shown, role=DEFAULT_ROLES, ax=ax, title=title or f"{stat} by layer: {view.name}")


def _look(runs: Sequence[RunView]) -> list[tuple[str, str]]:
    """Per run, its colour and line style (see :func:`~gradsight.display.family_looks`)."""
    return family_looks([family_and_depth(run) or (f"({name})", 0) for run, name in zip(runs, run_labels(runs))])


@styled
def grad_flow_overlay(runs: Sequence[RunSource], *, stat: str = "grad_norm",
                      axes: Sequence[Axes] | None = None, title: str | None = None) -> Figure:
    """Every run's ``stat`` by weighted layer at its first step (left) and late in training (right).

    The x axis is the relative depth of each weighted layer, 0 (input) to 1 (output), so
    networks of 20 and 56 layers line up. A family has one colour (deeper members darker).

    Args:
        runs: runs or run directories.
        stat: a layer statistic.
        axes: two axes to draw into (default: a new figure with two panels sharing y).
        title: the figure title.

    Returns:
        The figure.
    """
    if axes is None:
        fig = Figure(figsize=(12.0, 4.4), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
    else:
        fig = axes[0].figure
    late_steps = []
    drawn = 0
    with _opened(runs) as opened:
        looks = _look(opened)
        profiles = []
        for run, name in zip(opened, run_labels(opened)):
            first, late = first_and_late_steps(run)
            late_steps.append(late)
            values = layer_matrix(run, stat, steps=[first, late]).reindex(columns=shown_layers(run))
            profiles.append((name, first, late, values))
    for (name, first, late, values), (color, style) in zip(profiles, looks):
        n = values.shape[1]
        depth = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(n)
        for ax, step in zip(axes, (first, late)):
            if step in values.index:
                ax.plot(depth, positive(values.loc[step].to_numpy()), style, marker="o", ms=2.5, lw=1.4,
                        color=color, label=f"{name} (step {step})")
                drawn += 1
    axes[0].set_title("first step (initialization)")
    axes[1].set_title(f"late in training (step {max(late_steps) if late_steps else '?'})")
    fig.suptitle(title or f"Gradient flow, all runs: {stat} by layer")
    if not drawn:
        for ax in axes:
            no_data(ax, f"no {stat} recorded in these runs")
        return fig
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("relative depth of the weighted layer (0 = input, 1 = output)")
        ax.legend(loc="best")
    axes[0].set_ylabel(f"{stat} (log scale)")
    return fig


@styled
def training_curves(runs: Sequence[RunSource], *, axes: Sequence[Axes] | None = None) -> Figure:
    """Training loss at the recorded steps (left) and, per epoch (right), the train/test error of
    each classifier run or the train/test loss in bits per byte of each language-model run.

    A family has one colour (deeper members darker); in the right panel training values are
    drawn with circles and test values with crosses. A language-model run (one that logged
    ``test_bits_per_byte``, as :func:`gradsight.train.train` does on a byte-level corpus) shows
    ``train_bits_per_byte`` (the running mean over the epoch's batches) and
    ``test_bits_per_byte`` (the model at the end of the epoch); when every run is one, the right
    axis gives the same values as a loss in nats per byte (bits x ln 2).
    """
    if axes is None:
        fig = Figure(figsize=(12.0, 4.2), layout="constrained")
        axes = fig.subplots(1, 2)
    else:
        fig = axes[0].figure
    with _opened(runs) as opened:
        names = run_labels(opened)
        looks = _look(opened)
        logged = [run.metrics() for run in opened]
    kinds = set()
    for name, metrics, (color, style) in zip(names, logged, looks):
        if "loss" in metrics:
            loss = metrics["loss"].dropna()
            axes[0].plot(loss.index, loss.to_numpy(), style, color=color, lw=1.2, label=name)
        if "epoch" in metrics:
            per_epoch = metrics.dropna(subset=["epoch"])
            language = "test_bits_per_byte" in per_epoch and per_epoch["test_bits_per_byte"].notna().any()
            kinds.add("bits" if language else "error")
            train, test = ("train_bits_per_byte", "test_bits_per_byte") if language else ("train_error", "test_error")
            axes[1].plot(per_epoch["epoch"], per_epoch[train], style, marker="o", ms=4, color=color,
                         label=f"{name} train")
            axes[1].plot(per_epoch["epoch"], per_epoch[test], style, marker="x", ms=5, color=color,
                         label=f"{name} test")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("training loss (mini-batch, log scale)")
    axes[0].set_title("training loss at the recorded steps")
    axes[1].set_xlabel("epoch")
    if kinds == {"bits"}:
        axes[1].set_ylabel("loss in bits per byte (log scale)")
        axes[1].set_title("train loss (o, running over the epoch) and test loss (x)")
    elif kinds == {"bits", "error"}:
        axes[1].set_ylabel("error, or loss in bits per byte (log scale)")
        axes[1].set_title("train (o) and test (x): error of classifiers, bits per byte of language models")
    else:
        axes[1].set_ylabel("error (log scale)")
        axes[1].set_title("train error (o, running over the epoch) and test error (x)")
    for ax in axes:
        if not ax.get_lines():
            no_data(ax, "nothing logged")
            continue
        ax.set_yscale("log")
        ax.autoscale_view()
        ax.legend(loc="best", ncols=2 if len(names) > 2 else 1)
    if kinds == {"bits"} and axes[1].get_lines():
        nats = axes[1].secondary_yaxis("right", functions=(lambda b: b * math.log(2), lambda n: n / math.log(2)))
        nats.set_ylabel("loss in nats per byte")
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 2, 2.5, 3 rather than 2x10^0
        nats.yaxis.set_major_formatter(plain)
        nats.yaxis.set_minor_formatter(plain)
    return fig


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (150 dpi, tight), creating the folder; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path
