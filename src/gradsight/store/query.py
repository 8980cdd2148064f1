"""Reading a run for display and analysis: the one query layer every reader uses.

Plots, the report, the graph colouring, the diagnosis, ``gradsight info`` and the
comparison tables read runs through these functions, so they agree on

- which steps are shown: :func:`step_sample`, with one default (``DEFAULT_MAX_STEPS``
  evenly spaced recorded steps, the first and last included). Downsampling happens at
  read time, never in the store; non-finite gradients are found over *all* steps.
- one wide orientation: :func:`layer_matrix` is steps x names (as ``Run.series``),
  names in forward order.
- which layers a depth view shows: by role (:mod:`gradsight.store.roles`), by default
  the weighted layers and the head (:data:`DEFAULT_ROLES`), with ``grad_rms`` (size
  normalised) as the default statistic (:data:`DEFAULT_STAT`); ``role=None`` shows all.
- one first/last-layer ratio: :func:`first_last_ratios` (per step) and
  :func:`first_last_ratio` (one number for a run), over the weighted layers in forward
  order (:data:`RATIO_DEFINITION`).
- one family and depth of a run, from its recorded metadata only (:func:`family_and_depth`).
- one run summary: :func:`run_summary` (shown as text by :func:`gradsight.display.summary_rows`,
  with one time format, :func:`gradsight.display.format_time`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd

from gradsight.display import format_time, summary_rows
from gradsight.store.reader import DEFAULT_RUN_FOLDER, Run, column_order, folder_name, list_runs, open_run
from gradsight.store.roles import Role, as_roles
from gradsight.store.schema import DB_NAME, Level
from gradsight.store.view import DEFAULT_MAX_STEPS, RunSource, RunView, long_rows, step_sample, view_of

#: What readers accept as run data: a :class:`RunView`, a Run, a run directory, or a long
#: frame (columns ``step, level, name, depth, stat, value`` as from ``Run.frame()``).
RunLike = Union[RunView, Run, str, Path, pd.DataFrame]

#: Levels that hold one row per module (layers, and modules/blocks from activation hooks).
MODULE_LEVELS = Level.PER_MODULE


#: The statistic depth views show unless told otherwise: size-normalised, so a layer's
#: value does not grow with its number of elements.
DEFAULT_STAT = "grad_rms"

#: The layers depth views (flow, heatmap, comparisons, ``info``, the report) show unless
#: told otherwise: weighted layers and the head (``role=None`` shows all).
DEFAULT_ROLES = Role.DEPTH

#: A role filter: one role, several, or None (every layer).
Roles = Union[str, Sequence[str], None]

#: The first/last-layer ratio in words, for figures and tables.
RATIO_DEFINITION = ("first / last weighted layer, in forward order (embeddings, norm layers and the head "
                    "left out); median over steps of the per-step ratio")

#: How values over steps are reduced to one per layer.
AGGREGATES = {"median": np.nanmedian, "mean": np.nanmean, "max": np.nanmax, "min": np.nanmin}


def open_data(data: RunSource) -> Run:
    """The :class:`Run` of ``data``: itself, a view's run, or the run opened from that path."""
    if isinstance(data, Run):
        return data
    if isinstance(data, RunView):
        return data.run
    return open_run(data)


def as_view(data: RunLike, max_steps: int | None = DEFAULT_MAX_STEPS) -> RunView | pd.DataFrame:
    """A long frame as it is, anything else as a :class:`RunView` (:func:`view_of`): what a
    reader calls first, so that its several reads share one view."""
    return data if isinstance(data, pd.DataFrame) else view_of(data, max_steps=max_steps)


def _steps_of(view: RunView, max_steps: int | None, steps: Sequence[int] | None):
    """The view's choice of steps for ``max_steps`` / ``steps`` (see :meth:`RunView.matrices`)."""
    if steps is not None:
        return [int(s) for s in steps]
    if max_steps == view.max_steps:
        return "sample"
    if max_steps is None:
        return "all"
    return step_sample(view.steps, max_steps)


def expand_runs(paths: Iterable[Run | str | Path]) -> list[Run]:
    """Runs from run directories, store files, or directories holding runs (e.g. the
    output of ``gradsight compare``), in the order given (sorted within a directory): what
    multi-run commands read (a single-run command takes a folder's one run:
    :func:`~gradsight.store.reader.resolve_run`)."""
    runs: list[Run] = []
    for p in paths:
        if isinstance(p, Run):
            runs.append(p)
            continue
        path = Path(p)
        if path.is_dir() and not (path / DB_NAME).exists():
            found = list_runs(path)
            if found:
                runs.extend(open_run(r) for r in found)
                continue
        runs.append(open_run(path))
    return runs


def recorded_steps(data: RunLike) -> list[int]:
    """The recorded steps of a run or frame, ascending."""
    if isinstance(data, pd.DataFrame):
        return sorted(int(s) for s in data["step"].unique())
    return list(view_of(data).steps)


def _frame_long(df: pd.DataFrame, *, stat: str | Iterable[str] | None, level: str | Iterable[str] | None,
                max_steps: int | None, steps: Sequence[int] | None = None, role: Roles = None) -> pd.DataFrame:
    """The rows of a long frame that a wide table of it holds."""
    roles = as_roles(role)
    if roles is not None and "role" in df:
        df = df[df["role"].isin(roles)]
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


def name_order(df: pd.DataFrame, layer_order: Sequence[str] | None = None) -> list[str]:
    """Names of a long frame in the one column order (:func:`column_order`): by depth (and
    order of first appearance) at the layer and parameter levels, anchored on ``layer_order``
    (the run's layers in forward order) at the module levels."""
    first = df.drop_duplicates("name")
    levels = set(first["level"]) if "level" in first else {Level.LAYER}
    level = Level.LAYER if levels <= {Level.LAYER, Level.PARAM} else Level.MODULE
    depths = first["depth"] if "depth" in first else ()
    return column_order(level, first["name"], depths, (), layer_order or ())


def layer_matrix(data: RunLike, stat: str = "grad_norm", *, level: str = Level.LAYER, role: Roles = None,
                 max_steps: int | None = DEFAULT_MAX_STEPS, steps: Sequence[int] | None = None) -> pd.DataFrame:
    """One statistic as a wide table: index = step, columns = names in forward order.

    Args:
        data: a run view, run, run directory or long frame.
        stat: the statistic.
        level: ``layer`` (default), ``param``, or a module level (``module``, ``block``).
        role: only names with these roles, e.g. ``("weighted",)`` or
            :data:`DEFAULT_ROLES` (default None: every name; a long frame without a
            ``role`` column is not filtered).
        max_steps: at most this many evenly spaced steps (None = all).
        steps: exactly these steps instead.

    Returns:
        Float DataFrame (NaN where nothing was recorded), index named ``step`` (the
        steps at which ``stat`` was recorded), columns named ``name`` in the one column
        order (:func:`column_order`, as ``Run.series``); empty when the run has no such
        statistic at that level.
    """
    if isinstance(data, pd.DataFrame):
        found = layer_matrices(data, level=level, stat=stat, role=role, max_steps=max_steps, steps=steps)
        return found.get((level, stat), pd.DataFrame(dtype=float))
    view = view_of(data, max_steps=max_steps)
    return view.matrix(level, stat, steps=_steps_of(view, max_steps, steps), role=as_roles(role)).copy()


def layer_matrices(data: RunLike, *, level: str | Iterable[str] = MODULE_LEVELS,
                   stat: str | Iterable[str] | None = None, role: Roles = None,
                   max_steps: int | None = DEFAULT_MAX_STEPS,
                   steps: Sequence[int] | None = None) -> dict[tuple[str, str], pd.DataFrame]:
    """Several statistics at several levels as :func:`layer_matrix` tables, read in one query.

    Args:
        data: a run view, run, run directory or long frame.
        level: the levels to read (default: every level with one row per module).
        stat: the statistics to read (default: all).
        role: only names with these roles (default None: every name).
        max_steps: at most this many evenly spaced steps (None = all).
        steps: exactly these steps instead.

    Returns:
        ``(level, stat) -> DataFrame`` steps x names. All tables share one index (the
        steps read that hold any of the values); the tables of one level share their
        columns (every name recorded at that level, in forward order), so a
        statistic not recorded for a name or at a step is NaN there.
    """
    levels = [level] if isinstance(level, str) else list(level)
    if not isinstance(data, pd.DataFrame):
        view = view_of(data, max_steps=max_steps)
        stats = None if stat is None else ([stat] if isinstance(stat, str) else list(stat))
        keys = [(lv, st) for lv in levels for st in (view.stats(lv) if stats is None else stats)]
        tables = {k: t for k, t in view.matrices(keys, steps=_steps_of(view, max_steps, steps),
                                                  role=as_roles(role)).items() if not t.empty}
        if not tables:
            return {}
        index = pd.Index(sorted(set().union(*(t.index for t in tables.values()))), name="step", dtype=np.int64)
        columns: dict[str, set] = {}
        for (lv, _), t in tables.items():
            columns.setdefault(lv, set()).update(t.columns)
        order = {lv: pd.Index([n for n in view.names(lv) if n in names], name="name") for lv, names in columns.items()}
        return {(lv, st): t.reindex(index=index, columns=order[lv]) for (lv, st), t in tables.items()}
    df = _frame_long(data, stat=stat, level=level, max_steps=max_steps, steps=steps, role=role)
    if df.empty:
        return {}
    if "level" not in df:
        df = df.assign(level=level if isinstance(level, str) else Level.LAYER)
    step_index = pd.Index(np.unique(df["step"].to_numpy(dtype=np.int64)), name="step")
    row_of = np.searchsorted(step_index.to_numpy(), df["step"].to_numpy(dtype=np.int64))
    values = df["value"].to_numpy(dtype=float)
    out: dict[tuple[str, str], pd.DataFrame] = {}
    layer_rows = data[data["level"] == Level.LAYER] if "level" in data and "depth" in data else data.iloc[:0]
    layer_order = name_order(layer_rows) if len(layer_rows) else None  # anchors the module levels' order
    for lv, idx in df.groupby("level", sort=False).indices.items():
        group = df.iloc[idx]
        names = pd.Index(name_order(group, layer_order), name="name")
        col_of = names.get_indexer(group["name"])
        stat_codes, stat_names = pd.factorize(group["stat"])
        for k, st in enumerate(stat_names):
            pick = stat_codes == k
            matrix = np.full((len(step_index), len(names)), np.nan)
            matrix[row_of[idx][pick], col_of[pick]] = values[idx][pick]
            out[(str(lv), str(st))] = pd.DataFrame(matrix, index=step_index, columns=names)
    return out


def positive(values: np.ndarray) -> np.ndarray:
    """``values`` as floats with zeros, negatives and non-finite values as NaN (what a log
    axis or a ratio of magnitudes can use)."""
    values = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def layer_profile(data: RunLike, stat: str = "grad_norm", *, level: str = Level.LAYER, role: Roles = None,
                  agg: str = "median", step: int | None = None,
                  max_steps: int | None = DEFAULT_MAX_STEPS) -> pd.Series:
    """One value per name (forward order, names with the roles ``role`` only): ``agg`` of
    the positive, finite values of ``stat`` over the sampled steps, or its value at ``step``."""
    if agg not in AGGREGATES:
        raise ValueError(f"agg must be one of {', '.join(AGGREGATES)}, got {agg!r}")
    data = as_view(data, max_steps)
    m = layer_matrix(data, stat, level=level, role=role, steps=[step]) if step is not None else \
        layer_matrix(data, stat, level=level, role=role, max_steps=max_steps)
    if m.empty:
        return pd.Series(dtype=float, name=stat)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, which is right
        values = AGGREGATES[agg](positive(m.to_numpy()), axis=0)
    return pd.Series(values, index=m.columns, name=stat)


def roles_by_name(data: RunLike, level: str = Level.LAYER) -> dict[str, str]:
    """``name -> role`` of a run's names at ``level`` (of a long frame: from its ``role``
    column, empty without one)."""
    if isinstance(data, pd.DataFrame):
        if "role" not in data:
            return {}
        rows = data if "level" not in data else data[data["level"] == level]
        return dict(zip(rows["name"], rows["role"]))
    return view_of(data).roles(level)


def view_roles(data: RunLike, role: Roles = DEFAULT_ROLES, level: str = Level.LAYER) -> tuple[str, ...] | None:
    """The role filter a view uses: ``role`` (None or ``'all'``: every layer), except that
    the default (:data:`DEFAULT_ROLES`) applies to layers, parameters and modules (a
    ``module`` row of activation statistics has the role of the layer of its name, see
    :func:`gradsight.store.roles.row_roles`), not to residual blocks (all shown), and
    falls back to every name when the run has no weighted layer or head (a network of
    custom module types)."""
    roles = as_roles(role)
    if roles is None or tuple(roles) != tuple(DEFAULT_ROLES):
        return roles
    if level not in (Level.LAYER, Level.PARAM, Level.MODULE):
        return None
    present = set(roles_by_name(data, level).values())
    if not present or present & set(roles):
        return roles
    return None


def first_last_columns(matrix: pd.DataFrame) -> tuple[str, str] | None:
    """The first and the last layer of a steps x names table as :func:`first_last_ratios`
    takes them: the first and last columns holding a positive finite value at any step
    (None when fewer than two do)."""
    if matrix.empty:
        return None
    present = np.flatnonzero(~np.isnan(positive(matrix.to_numpy())).all(axis=0))
    if len(present) < 2:
        return None
    return matrix.columns[present[0]], matrix.columns[present[-1]]


def first_last_ratios(matrix: pd.DataFrame) -> pd.Series:
    """Per step: the first layer's value divided by the last layer's.

    The one definition of the first/last-layer ratio. ``matrix`` is steps x names in
    forward order; for a run's ratio it holds the weighted layers
    (``layer_matrix(run, stat, role=Role.RATIO)``, as :func:`first_last_ratio` reads
    it). The first and last layers are the first and last columns that hold a
    positive finite value at any step (:func:`first_last_columns`). Above 1, gradients grow toward the input (explode on
    the way back); below 1, they vanish. A step where either value is missing, zero or
    non-finite gives NaN.
    """
    if matrix.empty:
        return pd.Series(dtype=float)
    ends = first_last_columns(matrix)
    if ends is None:
        return pd.Series(np.nan, index=matrix.index, dtype=float)
    first, last = (positive(matrix[c].to_numpy()) for c in ends)
    with np.errstate(all="ignore"):
        return pd.Series(first / last, index=matrix.index, dtype=float)


def first_last_ratio(data: RunLike, stat: str = DEFAULT_STAT, *, level: str = Level.LAYER, agg: str = "median",
                     max_steps: int | None = DEFAULT_MAX_STEPS) -> float:
    """One number for a run: ``agg`` over the sampled steps of :func:`first_last_ratios`
    over the run's weighted layers in forward order (role ``weighted``: embeddings,
    norm layers, scalars and the head are left out; :data:`RATIO_DEFINITION`). NaN when
    it cannot be computed."""
    if agg not in AGGREGATES:
        raise ValueError(f"agg must be one of {', '.join(AGGREGATES)}, got {agg!r}")
    matrix = layer_matrix(data, stat, level=level, role=Role.RATIO, max_steps=max_steps)
    ratios = first_last_ratios(matrix).to_numpy()
    ratios = ratios[np.isfinite(ratios)]
    return float(AGGREGATES[agg](ratios)) if len(ratios) else float("nan")


def nonfinite_events(data: RunLike, *, level: str = Level.LAYER, max_events: int = 5000,
                     model_frame: pd.DataFrame | None = None, steps: Sequence[int] | None = None) -> pd.DataFrame:
    """Where gradients went non-finite, over all recorded steps.

    Args:
        data: a run view, run, run directory or long frame.
        level: the level whose rows to report (``layer`` or ``param``).
        max_events: at most this many rows.
        model_frame: not needed any more (a view reads the model rows once); ignored.
        steps: only at these steps (read with :meth:`RunView.arrays`, nothing kept in the
            view: the new steps of a run followed live); None: every recorded step.

    Returns:
        DataFrame ``step, name, count`` (``count`` = NaN/Inf elements), at most
        ``max_events`` rows, earliest first (names of one step in forward order).
    """
    cols = ["step", "name", "count"]
    if isinstance(data, pd.DataFrame):
        df = data[(data["stat"] == "grad_nonfinite") & (data["value"] > 0)]
        if "level" in df:
            df = df[df["level"] == level]
        return df[["step", "name", "value"]].rename(columns={"value": "count"}).head(max_events).reset_index(drop=True)
    view = view_of(data)
    if steps is not None:
        steps = [int(s) for s in steps]
        model, _ = view.arrays([(Level.MODEL, "grad_nonfinite")], steps, every_name=False)[(Level.MODEL, "grad_nonfinite")]
        with np.errstate(invalid="ignore"):
            bad = [s for s, v in zip(steps, model.max(axis=1, initial=0.0)) if v > 0]
    else:
        totals = view.totals
        model = totals[(totals["level"] == Level.MODEL) & (totals["stat"] == "grad_nonfinite")]
        bad = sorted(int(s) for s in model.loc[model["value"] > 0, "step"].unique())
    if not bad:
        return pd.DataFrame(columns=cols)
    rows: list[pd.DataFrame] = []
    for i in range(0, len(bad), 500):  # a bounded number of steps per read
        if steps is not None:
            values, written = view.arrays([(level, "grad_nonfinite")], bad[i : i + 500])[(level, "grad_nonfinite")]
            keep = written.any(axis=1)
            table = pd.DataFrame(values[keep], index=pd.Index(bad[i : i + 500], name="step")[keep],
                                 columns=pd.Index(view.names(level), name="name"))
        else:
            table = view.matrix(level, "grad_nonfinite", steps=bad[i : i + 500])
        if table.empty:
            continue
        long = long_rows(table).rename(columns={"value": "count"})
        rows.append(long[long["count"] > 0])
        if sum(len(r) for r in rows) >= max_events:
            break
    out = pd.concat(rows) if rows else pd.DataFrame(columns=cols)
    return out[cols].head(max_events).reset_index(drop=True)


def module_levels(data: RunSource) -> list[str]:
    """Levels of a run with per-module rows, ``layer`` first, e.g. ``['layer', 'block']``."""
    return list(view_of(data).module_levels)


def run_label(data: RunLike) -> str:
    """A short display name of a run."""
    if isinstance(data, pd.DataFrame):
        return str(data.attrs.get("name", "run"))
    if isinstance(data, (Run, RunView)):
        return data.name
    return folder_name(data)


def _name_and_path(data: RunLike) -> tuple[str, Path | None, bool]:
    """A run's name, path (None for a frame) and whether the name comes from its folder."""
    if isinstance(data, pd.DataFrame):
        return run_label(data), None, True
    if isinstance(data, (Run, RunView)):
        run = data.run if isinstance(data, RunView) else data
        return run.name, run.path, run.named_by_folder
    with open_run(data) as run:
        return run.name, run.path, run.named_by_folder


def _distinct_suffixes(paths: Sequence[Path]) -> list[str] | None:
    """The shortest trailing parts of ``paths`` (the default ``gradsight`` folder left off)
    that tell them apart, or None when two are the same folder."""
    parts = []
    for path in paths:
        p = path.resolve().parts
        parts.append(p[:-1] if len(p) > 1 and p[-1] == DEFAULT_RUN_FOLDER else p)
    for k in range(1, max(len(p) for p in parts) + 1):
        suffixes = ["/".join(p[-k:]) for p in parts]
        if len(set(suffixes)) == len(suffixes):
            return suffixes
    return None


def run_labels(runs: Sequence[RunLike]) -> list[str]:
    """Display names that tell the runs shown together apart, in order.

    Each run's :func:`run_label`; runs that share one are named by the shortest trailing
    part of their paths that differs (``x/exp`` and ``y/exp`` for ``x/exp/gradsight`` and
    ``y/exp/gradsight``), after their given name when they have one (``lstm (x/exp)``);
    the same run twice, or frames, are numbered (``lstm #2``).
    """
    named = [_name_and_path(r) for r in runs]
    labels = [name for name, _, _ in named]
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    for label, members in groups.items():
        if len(members) < 2:
            continue
        paths = [named[i][1] for i in members]
        suffixes = _distinct_suffixes(paths) if all(p is not None for p in paths) else None
        for n, i in enumerate(members, start=1):
            by_folder = named[i][2]
            if suffixes is None:
                labels[i] = f"{label} #{n}" if n > 1 else label
            else:
                labels[i] = suffixes[n - 1] if by_folder else f"{label} ({suffixes[n - 1]})"
    return labels


def family_and_depth(run: Run | RunView) -> tuple[str, int] | None:
    """The network family (``plain``, ``resnet`` ...) and depth of a run, or None.

    Only from the run's recorded config (``family`` and ``depth``): written by
    :func:`gradsight.train.train` from the model registry, by ``compare``, or given as
    ``gs.watch(..., config={"family": ..., "depth": ...})``. Nothing is guessed from
    names or layer counts: a run without both is None (and is left off depth sweeps).
    """
    cfg = run.config
    family, depth = cfg.get("family"), cfg.get("depth")
    if not family or depth is None:
        return None
    try:
        return str(family), int(depth)
    except (TypeError, ValueError):
        return None


@dataclass
class RunSummary:
    """What one looks at first about a run (see :func:`run_summary`)."""

    path: Path
    name: str
    model: str
    status: str
    error: str | None
    start: str
    end: str
    duration_s: float | None
    num_params: int
    num_trainable: int
    num_tensors: int
    num_layers: int
    depth_source: str
    steps: list[int]
    #: Per layer: name, depth, role, mean, median, min, max of ``stat`` over all
    #: recorded steps (None when not asked for), the layers of ``roles`` only.
    layers: pd.DataFrame | None = field(repr=False)
    stat: str = DEFAULT_STAT
    roles: tuple[str, ...] | None = None  #: the roles of ``layers`` (None: all)
    role_counts: dict[str, int] = field(default_factory=dict)  #: layers per role, in Role.ALL order
    details: dict[str, str] = field(default_factory=dict)  # optimizer, device, amp, torch version, schedule

    def rows(self, base: Path | None = None) -> list[tuple[str, str]]:
        """Deprecated: :func:`gradsight.display.summary_rows` (the rows are display, not data)."""
        warnings.warn("RunSummary.rows(base) is deprecated: use gradsight.display.summary_rows(summary, base)",
                      DeprecationWarning, stacklevel=2)
        return summary_rows(self, base)


def run_summary(data: RunSource, stat: str = DEFAULT_STAT, *, with_layers: bool = True,
                role: Roles = DEFAULT_ROLES) -> RunSummary:
    """The summary of a run shown by ``gradsight info`` and at the top of the report.

    ``with_layers`` adds the per-layer summary of ``stat`` over all recorded steps
    (:meth:`Run.layer_summary`, one pass over that statistic's rows) of the layers
    with the roles ``role`` (:func:`view_roles`: by default weighted layers and the head)."""
    view = view_of(data)
    roles = view_roles(view, role)
    layer_rows = view.layers()
    counts = layer_rows["role"].value_counts()
    role_counts = {r: int(counts[r]) for r in Role.ALL if r in counts}
    meta = view.meta

    def as_int(x: Any) -> int:
        try:
            return int(x)
        except (TypeError, ValueError):
            return 0

    try:
        duration: float | None = float(meta.get("end_time")) - float(meta.get("start_time"))
    except (TypeError, ValueError):
        duration = None
    details = {key.replace("_", " "): str(meta[key]) for key in ("optimizer", "device", "amp", "torch_version", "schedule")
               if meta.get(key) not in (None, "")}
    if view.config:
        details["config"] = ", ".join(f"{k}={v}" for k, v in view.config.items())
    return RunSummary(
        path=view.path, name=view.name, model=str(meta.get("model_class", "?")), status=view.status,
        error=str(meta["error"]) if meta.get("error") else None,
        start=format_time(meta.get("start_time")), end=format_time(meta.get("end_time")), duration_s=duration,
        num_params=as_int(meta.get("num_params")), num_trainable=as_int(meta.get("num_trainable")),
        num_tensors=len(view.params), num_layers=len(layer_rows),
        depth_source=str(meta.get("depth_source", "?")), steps=list(view.steps),
        layers=view._read(view.run.layer_summary, stat, role=roles) if with_layers else None,
        stat=stat, roles=roles, role_counts=role_counts, details=details,
    )


#: Names that moved out of this module: (new module, name). Importing them from here
#: still works, with a DeprecationWarning, for one release.
_MOVED = {
    "ROOT_DISPLAY_NAME": "gradsight.display", "display_name": "gradsight.display",
    "display_path": "gradsight.display", "summary_rows": "gradsight.display",
    "role_label": "gradsight.store.roles", "forward_order": "gradsight.store.reader",
    "RunData": None,  # this module's own RunLike
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    where = _MOVED[name]
    new = f"{where}.{name}" if where else f"{__name__}.RunLike"
    warnings.warn(f"{__name__}.{name} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(where), name) if where else RunLike
