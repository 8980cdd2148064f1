"""Figures for ``compare``: gradient flow per run, all runs overlaid, training curves.

The lecture's ``plot_gradients`` done right: the x axis is the network's weighted layers
(convolutions and the linear head, the layers that "20" and "56" count) in forward order,
not parameter indices; the y axis is logarithmic, so a gradient that shrinks or grows
geometrically with depth is a straight slope. Batch-norm layers are left out: their scale
and shift gradients live on another scale and would zigzag the line.

Every function takes runs (a :class:`gradsight.Run` or a run directory) and an optional
``ax``, and returns the matplotlib ``Figure``; none calls ``plt.show()``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradsight.store.reader import Run, open_run

__all__ = ["grad_flow", "grad_flow_overlay", "layer_values", "short_layer_name", "training_curves", "weighted_layers"]

#: Module types counted as weighted layers (what a network's depth counts).
WEIGHTED_TYPES = ("Conv1d", "Conv2d", "Conv3d", "Linear")

_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e5e5",
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "legend.fontsize": 8,
}
_FAMILY_COLORS = {"plain": "#d62728", "resnet": "#1f77b4", "preresnet": "#2ca02c", "mlp": "#ff7f0e", "resmlp": "#9467bd"}


def _open(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else open_run(run)


def short_layer_name(name: str) -> str:
    """``stage2.block0.branch.conv1`` -> ``s2.b0.conv1``; ``stem.conv`` and ``head.fc`` stay."""
    name = re.sub(r"stage(\d+)", r"s\1", name)
    name = re.sub(r"block(\d+)", r"b\1", name)
    return name.replace(".branch.", ".")


def weighted_layers(run: Run) -> list[str]:
    """Names of the run's convolution and linear layers in forward order (all layers if none)."""
    layers = run.layers()
    weighted = layers[layers["module_type"].isin(WEIGHTED_TYPES)]
    return list((weighted if len(weighted) else layers)["name"])


def layer_values(run: Run, stat: str = "grad_norm", steps: Sequence[int] | None = None) -> pd.DataFrame:
    """``stat`` of the weighted layers: index = step, columns = layer names in forward order."""
    names = weighted_layers(run)
    frame = run.frame(level="layer", stat=stat, name=names, steps=steps)
    if frame.empty:
        return pd.DataFrame(columns=names)
    wide = frame.pivot_table(index="step", columns="name", values="value", aggfunc="last", dropna=False)
    return wide.reindex(columns=names)


def first_and_late_steps(run: Run) -> tuple[int, int]:
    """The first recorded step and the last one with a full batch (the end of training).

    When the training set does not divide into batches, an epoch's last batch is smaller and
    its gradient noisier, so for runs of :func:`gradsight.train.train` (whose config says the
    batch size and the number of training samples) such steps are passed over for "late".
    """
    steps = run.steps()
    if not steps:
        raise ValueError(f"run {run.name!r} recorded no gradient steps")
    config = run.config
    per_epoch, num_train = config.get("steps_per_epoch"), config.get("num_train")
    batch_size = (config.get("recipe") or {}).get("batch_size")
    late = steps[-1]
    if per_epoch and num_train and batch_size and num_train % batch_size:
        full = [s for s in steps if (s + 1) % per_epoch]
        late = full[-1] if full else late
    return steps[0], late


def _label(run: Run) -> str:
    network, layers = run.meta.get("network"), run.meta.get("layers")
    if network and layers:
        return f"{network}-{layers}"
    return run.name


def _color(run: Run, index: int) -> tuple | str:
    return _FAMILY_COLORS.get(str(run.meta.get("network")), matplotlib.colormaps["tab10"](index % 10))


def _depth_alpha(run: Run, runs: Sequence[Run]) -> float:
    """Shallower networks drawn lighter than the deepest one of the same family."""
    depths = [r.meta.get("layers") or 0 for r in runs if r.meta.get("network") == run.meta.get("network")]
    return 1.0 if (run.meta.get("layers") or 0) >= max(depths, default=0) else 0.5


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _positive(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return np.where(values > 0, values, np.nan)  # a log axis cannot show 0 or negatives


def grad_flow(
    run: Run | str | Path,
    steps: Sequence[int] | None = None,
    *,
    stat: str = "grad_norm",
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """``stat`` of each weighted layer in forward order, log scale, one line per step.

    Args:
        run: a run or run directory.
        steps: the steps to draw (default: the first recorded step and the last one).
        stat: a layer statistic, e.g. ``grad_norm``, ``grad_rms``, ``grad_weight_ratio``.
        ax: draw into these axes.
        title: the title (default: ``"<stat> by layer: <network>-<layers>"``).

    Returns:
        The figure.
    """
    run = _open(run)
    steps = list(steps) if steps is not None else sorted(set(first_and_late_steps(run)))
    values = layer_values(run, stat, steps)
    with matplotlib.rc_context(_STYLE):
        names = list(values.columns)
        fig, ax = _new_axes(ax, (min(15.0, max(6.0, 0.16 * len(names) + 3.0)), 4.2))
        x = np.arange(1, len(names) + 1)
        cmap = matplotlib.colormaps["viridis"]
        for i, step in enumerate(values.index):
            color = cmap(0.15 + 0.7 * i / max(1, len(values.index) - 1))
            ax.plot(x, _positive(values.loc[step].to_numpy()), marker="o", ms=3, lw=1.4, color=color,
                    label=f"step {step}" + (" (initialization)" if step == 0 else ""))
        ax.set_yscale("log")
        every = max(1, int(np.ceil(len(names) / 40)))
        ax.set_xticks(x[::every], [short_layer_name(n) for n in names[::every]], rotation=60, ha="right",
                      rotation_mode="anchor", fontsize=7 if len(names) > 30 else 8)
        ax.set_xlim(0.5, len(names) + 0.5)
        ax.set_xlabel("weighted layer, input → output (forward order)")
        ax.set_ylabel(f"{stat} (log scale)")
        ax.set_title(title or f"{stat} by layer: {_label(run)}")
        ax.legend(loc="best")
    return fig


def grad_flow_overlay(
    runs: Sequence[Run | str | Path],
    *,
    stat: str = "grad_norm",
    axes: Sequence[Axes] | None = None,
    title: str | None = None,
) -> Figure:
    """Every run's ``stat`` by layer at its first step (left) and late in training (right).

    The x axis is the relative depth of each weighted layer, 0 (input) to 1 (output), so
    networks of 20 and 56 layers line up. Plain networks are drawn dashed, residual solid.

    Args:
        runs: runs or run directories.
        stat: a layer statistic.
        axes: two axes to draw into (default: a new figure with two panels sharing y).
        title: the figure title.

    Returns:
        The figure.
    """
    opened = [_open(r) for r in runs]
    with matplotlib.rc_context(_STYLE):
        if axes is None:
            fig = Figure(figsize=(12.0, 4.4), layout="constrained")
            axes = fig.subplots(1, 2, sharey=True)
        else:
            fig = axes[0].figure
        late_steps = []
        for i, run in enumerate(opened):
            first, late = first_and_late_steps(run)
            late_steps.append(late)
            values = layer_values(run, stat, [first, late])
            n = values.shape[1]
            depth = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(n)
            style = "--" if run.meta.get("network") in ("plain", "mlp") else "-"
            for ax, step in zip(axes, (first, late)):
                if step in values.index:
                    ax.plot(depth, _positive(values.loc[step].to_numpy()), style, marker="o", ms=2.5, lw=1.4,
                            color=_color(run, i), alpha=_depth_alpha(run, opened),
                            label=f"{_label(run)} (step {step})")
        axes[0].set_title("first step (initialization)")
        axes[1].set_title(f"late in training (step {max(late_steps) if late_steps else '?'})")
        for ax in axes:
            ax.set_yscale("log")
            ax.set_xlabel("relative depth of the weighted layer (0 = input, 1 = output)")
            ax.legend(loc="best")
        axes[0].set_ylabel(f"{stat} (log scale)")
        fig.suptitle(title or f"Gradient flow, all runs: {stat} by layer")
    return fig


def training_curves(runs: Sequence[Run | str | Path], *, axes: Sequence[Axes] | None = None) -> Figure:
    """Training loss at the recorded steps (left) and train/test error per epoch (right), per run.

    Plain networks are dashed, residual solid; in the right panel the training error is drawn
    with circles and the test error with crosses.
    """
    opened = [_open(r) for r in runs]
    with matplotlib.rc_context(_STYLE):
        if axes is None:
            fig = Figure(figsize=(12.0, 4.2), layout="constrained")
            axes = fig.subplots(1, 2)
        else:
            fig = axes[0].figure
        for i, run in enumerate(opened):
            metrics = run.metrics()
            color, label = _color(run, i), _label(run)
            style = "--" if run.meta.get("network") in ("plain", "mlp") else "-"
            alpha = _depth_alpha(run, opened)
            if "loss" in metrics:
                loss = metrics["loss"].dropna()
                axes[0].plot(loss.index, loss.to_numpy(), style, color=color, lw=1.2, alpha=alpha, label=label)
            if "epoch" in metrics:
                per_epoch = metrics.dropna(subset=["epoch"])
                axes[1].plot(per_epoch["epoch"], per_epoch["train_error"], style, marker="o", ms=4,
                             color=color, alpha=alpha, label=f"{label} train")
                axes[1].plot(per_epoch["epoch"], per_epoch["test_error"], style, marker="x", ms=5,
                             color=color, alpha=alpha, label=f"{label} test")
        axes[0].set_yscale("log")
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("training loss (mini-batch, log scale)")
        axes[0].set_title("training loss at the recorded steps")
        axes[1].set_yscale("log")
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("error (log scale)")
        axes[1].set_title("train error (o, running over the epoch) and test error (x)")
        for ax in axes:
            ax.legend(loc="best", ncol=2 if len(opened) > 2 else 1)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (150 dpi, tight) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def figures_for(runs: Mapping[str, Run | str | Path], out_dir: str | Path, *, stat: str = "grad_norm") -> list[Path]:
    """Write the per-run gradient-flow figures, the overlay and the training curves into ``out_dir``."""
    out_dir = Path(out_dir)
    written = []
    for key, run in runs.items():
        written.append(save(grad_flow(run, stat=stat), out_dir / f"gradflow-{key}.png"))
    written.append(save(grad_flow_overlay(list(runs.values()), stat=stat), out_dir / "gradflow-all.png"))
    written.append(save(training_curves(list(runs.values())), out_dir / "training-curves.png"))
    return written
