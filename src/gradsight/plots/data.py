"""Data for pictures: runs and frames to depth-ordered tables, downsampled for display.

Downsampling happens here, at read time, and never in the store: a run of 10,000
recorded steps is shown through at most ``max_steps`` evenly spaced steps (always
including the first and the last), read with ``Run.frame(steps=...)`` so only
those rows leave SQLite. Non-finite gradients are found over *all* steps through
the model-level ``grad_nonfinite`` series, so no spike is lost to sampling.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd

from gradsight.store.reader import Run, open_run

#: What plot functions accept as run data: a Run, a run directory, or a long frame
#: (columns ``step, level, name, depth, stat, value`` as from ``Run.frame()``).
RunData = Union[Run, str, Path, pd.DataFrame]

#: Levels that hold one row per module (layers, and modules/blocks from activation hooks).
MODULE_LEVELS = ("layer", "module", "block")


def open_data(data: Run | str | Path) -> Run:
    """``data`` itself if it is a :class:`Run`, else the run opened from that path."""
    if isinstance(data, Run):
        return data
    return open_run(data)


def step_sample(steps: Sequence[int], max_steps: int | None) -> list[int]:
    """At most ``max_steps`` of ``steps``, evenly spaced, first and last included."""
    steps = list(steps)
    if max_steps is None or len(steps) <= max_steps:
        return steps
    if max_steps < 2:
        return steps[-1:]
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, max_steps)).astype(int))
    return [steps[i] for i in idx]


def _long(data: RunData, *, stat: str | Iterable[str] | None, level: str | Iterable[str] | None,
          max_steps: int | None, steps: Sequence[int] | None = None) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        df = data
        if stat is not None and "stat" in df:
            df = df[df["stat"].isin([stat] if isinstance(stat, str) else list(stat))]
        if level is not None and "level" in df:
            df = df[df["level"].isin([level] if isinstance(level, str) else list(level))]
        if steps is not None:
            df = df[df["step"].isin(list(steps))]
        elif max_steps is not None:
            keep = step_sample(sorted(df["step"].unique()), max_steps)
            df = df[df["step"].isin(keep)]
        return df
    run = open_data(data)
    if steps is not None:
        return run.frame(level=level, stat=stat, steps=[int(s) for s in steps])
    all_steps = run.steps()
    sampled = step_sample(all_steps, max_steps)
    return run.frame(level=level, stat=stat, steps=None if len(sampled) == len(all_steps) else sampled)


def recorded_steps(data: RunData) -> list[int]:
    """The recorded steps of a run or frame, ascending."""
    if isinstance(data, pd.DataFrame):
        return sorted(int(s) for s in data["step"].unique())
    return open_data(data).steps()


def name_order(df: pd.DataFrame, layer_order: Sequence[str] | None = None) -> list[str]:
    """Names of a long frame in forward order.

    Layer and parameter rows sort by their layer's depth. Rows of other levels
    (``module``, ``block``: activation statistics) mix kinds whose depths are ranked
    separately, so with ``layer_order`` (the run's layers, forward order) they sort
    by the first layer inside them (a container before its contents); modules
    without parameters go after the last layer of their parent. Without it, or when
    depths are missing, names keep their order of first appearance.
    """
    first = df.drop_duplicates("name")
    names = list(first["name"])
    levels = set(first["level"]) if "level" in first else {"layer"}
    if levels <= {"layer", "param"} and "depth" in first and not first["depth"].isna().any():
        return list(first.sort_values("depth", kind="mergesort")["name"])
    if layer_order is None:
        return names
    return forward_order(names, layer_order)


def forward_order(names: Sequence[str], layer_order: Sequence[str]) -> list[str]:
    """``names`` (qualified module names of any kind) sorted into forward order, anchored
    on ``layer_order``; see :func:`name_order`."""
    pos = {n: i for i, n in enumerate(layer_order)}

    def inside(prefix: str) -> list[int]:
        if prefix == "":
            return list(pos.values())
        return [i for n, i in pos.items() if n == prefix or n.startswith(prefix + ".")]

    def key(item: tuple[int, str]) -> tuple[float, int, int]:
        k, name = item
        own = inside(name)
        if own:
            return (min(own), name.count(".") if name else -1, k)
        parent = name
        while "." in parent:
            parent = parent.rsplit(".", 1)[0]
            under = inside(parent)
            if under:
                return (max(under) + 0.5, name.count("."), k)
        return (float("inf"), 0, k)

    return [name for _, name in sorted(enumerate(names), key=key)]


def layer_matrix(data: RunData, stat: str = "grad_norm", *, level: str = "layer",
                 max_steps: int | None = 400, steps: Sequence[int] | None = None) -> pd.DataFrame:
    """One statistic as a table: rows = names in depth order, columns = steps.

    Args:
        data: a run, run directory or long frame.
        stat: the statistic.
        level: ``layer`` (default), ``param``, or a module level (``module``, ``block``).
        max_steps: show at most this many evenly spaced steps (None = all).
        steps: exactly these steps instead.

    Returns:
        Float DataFrame (NaN where nothing was recorded); empty when the run has no
        such statistic at that level.
    """
    df = _long(data, stat=stat, level=level, max_steps=max_steps, steps=steps)
    if df.empty:
        return pd.DataFrame(dtype=float)
    wide = df.pivot_table(index="name", columns="step", values="value", aggfunc="last", dropna=False)
    layer_order = None
    if level not in ("layer", "param") and not isinstance(data, pd.DataFrame):
        layer_order = list(open_data(data).layers()["name"])
    wide = wide.reindex(index=name_order(df, layer_order))
    wide.columns = wide.columns.astype(int)
    wide.columns.name = "step"
    wide.index.name = "name"
    return wide.astype(float)


def nonfinite_events(data: RunData, *, level: str = "layer", max_events: int = 5000,
                     model_frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """Where gradients went non-finite, over all recorded steps.

    Args:
        data: a run, run directory or long frame.
        level: the level whose rows to report (``layer`` or ``param``).
        max_events: at most this many rows.
        model_frame: the run's model-level rows if already read (saves a query).

    Returns:
        DataFrame ``step, name, count`` (``count`` = NaN/Inf elements), at most
        ``max_events`` rows, earliest first. Model-level rows have ``name == ""``.
    """
    cols = ["step", "name", "count"]
    if isinstance(data, pd.DataFrame):
        df = data[(data["stat"] == "grad_nonfinite") & (data["value"] > 0)]
        if "level" in df:
            df = df[df["level"] == level]
        return df[["step", "name", "value"]].rename(columns={"value": "count"}).head(max_events).reset_index(drop=True)
    run = open_data(data)
    if model_frame is None:
        model = run.frame(level="model", stat="grad_nonfinite")
    else:
        model = model_frame[(model_frame["level"] == "model") & (model_frame["stat"] == "grad_nonfinite")]
    bad = sorted(model.loc[model["value"] > 0, "step"].unique().tolist())
    if not bad:
        return pd.DataFrame(columns=cols)
    rows = []
    for i in range(0, len(bad), 500):  # keep SQL parameter lists short
        df = run.frame(level=level, stat="grad_nonfinite", steps=bad[i : i + 500])
        rows.append(df[df["value"] > 0])
        if sum(len(r) for r in rows) >= max_events:
            break
    out = pd.concat(rows) if rows else pd.DataFrame(columns=["step", "name", "value"])
    return out[["step", "name", "value"]].rename(columns={"value": "count"}).head(max_events).reset_index(drop=True)


def module_levels(run: Run) -> list[str]:
    """Levels of ``run`` with per-module rows, ``layer`` first, e.g. ``['layer', 'block']``."""
    return [lv for lv in MODULE_LEVELS if run.stats(lv)]


def run_label(data: RunData) -> str:
    """A short display name of a run."""
    if isinstance(data, pd.DataFrame):
        return str(data.attrs.get("name", "run"))
    if isinstance(data, Run):
        return data.name
    return Path(data).name


_TRAILING_NUMBER = re.compile(r"^(.*?)[-_]?(\d+)$")


def family_and_depth(run: Run) -> tuple[str, int]:
    """The network family (``plain``, ``resnet``, ``residual-mlp`` ...) and depth of a run.

    Taken from the run's config (``family``/``network``/``model`` and ``depth``/``layers``)
    when present, else from its name (``plain56`` -> ``plain``, 56), else the depth is
    the number of layers recorded.
    """
    cfg = run.config
    name = str(cfg.get("family") or cfg.get("network") or cfg.get("model") or run.name)
    m = _TRAILING_NUMBER.match(name)
    family = m.group(1) if m and m.group(1) else name
    if "skip" in cfg and not cfg.get("family"):
        family = family if family.lower() not in ("mlp", "cnn", "net") else ("residual" if cfg["skip"] else "plain")
    depth: Any = cfg.get("depth") or cfg.get("layers")
    if depth is None and m:
        depth = int(m.group(2))
    if depth is None:
        depth = len(run.layers())
    return family.rstrip("-_") or "run", int(depth)
