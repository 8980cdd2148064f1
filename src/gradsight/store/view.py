"""One run as every reader sees it: :class:`RunView`.

The plots, the report, the diagnosis, the graph colouring and ``gradsight info`` read a
run through one view, so they agree on

- the steps: every recorded step (:attr:`RunView.steps`) and the evenly spaced sample shown
  (:attr:`RunView.sample`, :func:`step_sample`: at most ``max_steps``, first and last
  included);
- the names: layers in forward order, their roles, the residual blocks, and one column
  order for every wide table (:func:`gradsight.store.reader.column_order`, the order of
  ``Run.series`` too);
- the numbers: ``(level, stat)`` tables of steps x names, read once and kept
  (:meth:`RunView.matrix`, several at once with :meth:`RunView.matrices`), the model and
  metric lines over all steps (:meth:`RunView.totals`), histograms.

A view reads the store lazily and keeps what it read: metadata once, each table once per
choice of steps. It is a snapshot: a view of a live run does not see steps written after
it read them (open a new view for those). Its reads are serialised by a lock, so a
background thread (the report's diagnosis) can share it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
import functools
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import pandas as pd

from gradsight.store.reader import Run, column_order, level_roles, open_run
from gradsight.store.roles import as_roles
from gradsight.store.schema import RowKind, Level

#: Recorded steps a reader looks at, at most, unless told otherwise (evenly spaced).
DEFAULT_MAX_STEPS = 400

#: Which steps a table holds: ``"sample"`` (the view's sample), ``"all"`` (every
#: recorded step), or exactly the steps given.
Steps = Union[Literal["sample", "all"], Sequence[int]]


def step_sample(steps: Sequence[int], max_steps: int | None = DEFAULT_MAX_STEPS) -> list[int]:
    """At most ``max_steps`` of ``steps``, evenly spaced, first and last included
    (``None``: all of them)."""
    steps = list(steps)
    if max_steps is None or len(steps) <= max_steps:
        return steps
    if max_steps < 2:
        return steps[-1:]
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, max_steps)).astype(int))
    return [steps[i] for i in idx]


def _once(fn):
    """A property computed once per view, under the view's lock (so a second thread waits
    for the first read instead of reading again)."""
    name = fn.__name__

    @functools.wraps(fn)
    def get(self: RunView) -> Any:
        memo = self._memo
        if name not in memo:
            with self._lock:
                if name not in memo:
                    memo[name] = fn(self)
        return memo[name]

    return property(get)


class RunView:
    """A recorded run as the readers see it (see the module's docstring).

    Args:
        run: an open :class:`~gradsight.store.reader.Run`, or the path of a run (opened
            here and closed by :meth:`close`).
        max_steps: the size of :attr:`sample` (None: every recorded step).
        until: only the steps up to this one (None: all): the run as it stood then (the
            doctor judges the first k steps of a longer run exactly as a k-step run).
    """

    def __init__(self, run: Run | str | Path, *, max_steps: int | None = DEFAULT_MAX_STEPS,
                 until: int | None = None) -> None:
        self._owned = not isinstance(run, Run)
        self.run: Run = open_run(run) if self._owned else run
        self.max_steps = max_steps
        self.until = until
        self._lock = threading.RLock()
        self._tables: dict[tuple[str, str, Any], pd.DataFrame] = {}
        self._written: dict[tuple[str, str, Any], np.ndarray] = {}
        self._wanted: dict[Any, list[tuple[str, str]]] = {}
        self._roles: dict[str, dict[str, str]] = {}
        self._names: dict[str, list[str]] = {}
        self._stats: dict[str | None, list[str]] = {}
        self._columns: dict[tuple[str, str], np.ndarray] = {}
        self._memo: dict[str, Any] = {}

    # -- the run ----------------------------------------------------------------------
    def __repr__(self) -> str:
        until = "" if self.until is None else f", until={self.until}"
        return f"RunView({str(self.path)!r}, steps={len(self.steps)}, sample={len(self.sample)}{until})"

    def close(self) -> None:
        """Close the run if the view opened it."""
        if self._owned:
            self.run.close()

    def __enter__(self) -> RunView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def meta(self) -> dict[str, Any]:
        return self.run.meta

    @property
    def config(self) -> dict:
        return self.run.config

    @property
    def status(self) -> str:
        return self.run.status

    def _read(self, fn, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(*args, **kwargs)

    # -- steps ------------------------------------------------------------------------
    @_once
    def steps(self) -> list[int]:
        """Every recorded step (up to :attr:`until`), ascending."""
        steps = self._read(self.run.steps)
        return steps if self.until is None else [s for s in steps if s <= self.until]

    @_once
    def sample(self) -> list[int]:
        """The steps shown: :func:`step_sample` of :attr:`steps` with ``max_steps``."""
        return step_sample(self.steps, self.max_steps)

    # -- names ------------------------------------------------------------------------
    @_once
    def rows(self) -> pd.DataFrame:
        """Every ``layers`` row (layers, blocks, modules): ``Run.layers(kind=None)``."""
        return self._read(self.run.layers, kind=None)

    def layers(self, kind: str | None = RowKind.LAYER, *, role: str | Iterable[str] | None = None) -> pd.DataFrame:
        """As :meth:`Run.layers <gradsight.store.reader.Run.layers>`, from the rows read once."""
        df = self.rows
        if kind is not None:
            df = df[df["kind"] == kind].sort_values(["depth", "name"], kind="mergesort")
        roles = as_roles(role)
        if roles is not None:
            df = df[df["role"].isin(roles)]
        return df.reset_index(drop=True)

    @_once
    def layer_order(self) -> list[str]:
        """The run's layers (modules owning parameters) in forward order."""
        return list(self.layers()["name"])

    @_once
    def blocks(self) -> set[str]:
        """Names of the residual blocks (a name may be a layer and a block)."""
        return set(self.rows["name"][self.rows["kind"] == RowKind.BLOCK])

    @_once
    def module_type(self) -> dict[str, str]:
        """``name -> module type`` of every row."""
        return dict(zip(self.rows["name"], self.rows["module_type"]))

    @_once
    def depth(self) -> dict[str, float]:
        """``name -> forward rank`` of every row (a name with rows of several kinds: the
        rank of the kind sorted last, ``module``, else ``layer``, else ``block``)."""
        return dict(zip(self.rows["name"], self.rows["depth"]))

    def roles(self, level: str = Level.LAYER) -> dict[str, str]:
        """``name -> role`` at a series level (as :meth:`Run.roles <gradsight.store.reader.Run.roles>`)."""
        if level not in self._roles:
            with self._lock:
                if level not in self._roles:
                    self._roles[level] = level_roles(self.rows, level, self.params if level == Level.PARAM else None)
        return self._roles[level]

    def role(self, name: str, level: str = Level.LAYER) -> str:
        """The role of one name (``other`` for a name without one)."""
        return self.roles(level).get(name, "other")

    @_once
    def params(self) -> pd.DataFrame:
        """``Run.params()``, read once."""
        return self._read(self.run.params)

    @_once
    def _index(self) -> pd.DataFrame:
        return self._read(self.run.series_index)

    def stats(self, level: str | None = None) -> list[str]:
        """The statistics recorded (at one level), sorted."""
        if level not in self._stats:
            with self._lock:
                index = self._index if level is None else self._index[self._index["level"] == level]
                self._stats[level] = sorted(set(index["stat"]))
        return list(self._stats[level])

    @_once
    def module_levels(self) -> list[str]:
        """Levels with per-module rows that hold values, ``layer`` first (e.g. ``['layer', 'block']``)."""
        present = set(self._index["level"])
        return [lv for lv in Level.PER_MODULE if lv in present]

    def names(self, level: str) -> list[str]:
        """Every name recorded at ``level``, in the one column order."""
        if level not in self._names:
            with self._lock:
                part = self._index[self._index["level"] == level].drop_duplicates("name")
                self._names[level] = column_order(level, part["name"], part["depth"], part["position"],
                                                  self.layer_order)
        return list(self._names[level])

    # -- numbers ----------------------------------------------------------------------
    def _step_key(self, steps: Steps) -> tuple[Any, list[int] | None]:
        """The cache key and the steps to read (None: all) of a choice of steps."""
        if isinstance(steps, str):
            if steps == "all":
                return "all", None
            if steps == "sample":
                sample = self.sample
                return ("all", None) if len(sample) == len(self.steps) else ("sample", sample)
            raise ValueError(f"steps must be 'sample', 'all' or a list of steps, got {steps!r}")
        chosen = tuple(sorted({int(s) for s in steps}))
        return chosen, list(chosen)

    def matrices(self, keys: Iterable[tuple[str, str]], *, steps: Steps = "sample",
                 role: str | Iterable[str] | None = None) -> dict[tuple[str, str], pd.DataFrame]:
        """Several ``(level, stat)`` tables, the ones not yet read read together in one pass.

        Args:
            keys: ``(level, stat)`` pairs.
            steps: ``"sample"`` (default), ``"all"`` or exactly these steps.
            role: only names with these roles (None: every name).

        Returns:
            ``(level, stat) -> DataFrame``, steps x names (:meth:`Run.read_tables
            <gradsight.store.reader.Run.read_tables>`: the steps at which that statistic was
            written, names in the one column order); an empty frame for a key the run does
            not hold. The tables are the view's own: copy before changing them.
        """
        key, read = self._step_key(steps)
        keys = list(dict.fromkeys((str(lv), str(st)) for lv, st in keys))
        missing = [k for k in keys if (*k, key) not in self._tables]
        if missing:
            with self._lock:
                missing = [k for k in missing if (*k, key) not in self._tables]
                if missing:  # tables another reader said it will want: read along (each group of values once)
                    missing += [k for k in self._wanted.pop(key, []) if (*k, key) not in self._tables and k not in missing]
                if missing and key == "all":  # the model and metric series are few: read them along
                    missing += [k for k in self._total_keys if (*k, key) not in self._tables and k not in missing]
                written: dict = {}
                tables = self.run.read_tables(self._index, missing, read, layer_order=self.layer_order,
                                              written=written) if missing else {}
                for k in missing:
                    table = tables.get(k, pd.DataFrame(dtype=float))
                    mask = written.get(k, np.zeros(table.shape, dtype=bool))
                    if self.until is not None and not table.empty:
                        keep = np.asarray(table.index <= self.until)
                        table, mask = table.loc[keep], mask[keep]
                    self._tables[(*k, key)] = table
                    self._written[(*k, key)] = mask
        out = {k: self._tables[(*k, key)] for k in keys}
        roles = as_roles(role)
        if roles is not None:
            keep = set(roles)
            out = {k: t[[c for c in t.columns if self.roles(k[0]).get(c) in keep]] if not t.empty else t
                   for k, t in out.items()}
        return out

    def arrays(self, keys: Iterable[tuple[str, str]], steps: Sequence[int], *, every_name: bool = True
               ) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
        """Several ``(level, stat)`` tables at exactly ``steps`` as arrays, read in one query
        and kept nowhere: what a reader following a live run asks at every poll for the
        steps it lacks (no frame is built; the view's layout, read once, gives the columns).

        Returns:
            ``(level, stat) -> (values, written)``: float64 ``values[len(steps), len(names)]``
            with a row per step given and a column per name of the level (:meth:`names`;
            with ``every_name`` False only the names holding that statistic, as the
            columns of :meth:`matrices`), NaN where nothing was written, and the
            boolean ``written`` of that shape (True where a value was written, a NaN for a
            non-finite one). The same numbers as :meth:`matrices` at those steps.
        """
        keys = list(dict.fromkeys((str(lv), str(st)) for lv, st in keys))
        steps = np.asarray([int(s) for s in steps], dtype=np.int64)
        columns = [self._column_ids(*k) for k in keys]
        if not every_name:
            columns = [cols[cols >= 0] for cols in columns]
        ids = np.concatenate(columns) if columns else np.zeros(0, np.int64)
        unique = np.unique(ids[ids >= 0])
        step_values, matrix, present = self._read(self.run.read_matrix, unique, steps.tolist()) \
            if len(unique) and len(steps) else (np.zeros(0, np.int64), None, None)
        at = np.searchsorted(step_values, steps).clip(max=max(0, len(step_values) - 1))
        found = (at < len(step_values)) & (step_values[at] == steps) if len(step_values) else np.zeros(len(steps), bool)
        out = {}
        for key, cols in zip(keys, columns):
            values = np.full((len(steps), len(cols)), np.nan)
            written = np.zeros((len(steps), len(cols)), dtype=bool)
            has = cols >= 0
            if len(step_values) and has.any():
                pos = np.searchsorted(unique, cols[has])
                rows = np.flatnonzero(found)
                values[np.ix_(rows, np.flatnonzero(has))] = matrix[np.ix_(at[rows], pos)]
                written[np.ix_(rows, np.flatnonzero(has))] = present[np.ix_(at[rows], pos)]
            if self.until is not None:
                late = steps > self.until
                values[late], written[late] = np.nan, False
            out[key] = (values, written)
        return out

    def _column_ids(self, level: str, stat: str) -> np.ndarray:
        """The series id of ``(level, stat)`` of each name of :meth:`names` (-1: none), kept."""
        key = (level, stat)
        if key not in self._columns:
            index = self._index
            part = index[(index["level"] == level) & (index["stat"] == stat)]
            ids = dict(zip(part["name"], part["id"]))
            self._columns[key] = np.array([int(ids.get(n, -1)) for n in self.names(level)], dtype=np.int64)
        return self._columns[key]

    def written(self, level: str, stat: str, *, steps: Steps = "sample") -> pd.DataFrame:
        """Which cells of :meth:`matrix` hold a written value (True; a non-finite value is
        written as NaN) and which are missing (False: the module did not run at that step,
        e.g. a layer skipped by LayerDrop or an expert not routed to)."""
        table = self.matrix(level, stat, steps=steps)
        mask = self._written.get((str(level), str(stat), self._step_key(steps)[0]))
        if mask is None or mask.shape != table.shape:
            mask = table.notna().to_numpy()
        return pd.DataFrame(mask, index=table.index, columns=table.columns)

    def want(self, keys: Iterable[tuple[str, str]], *, steps: Steps = "sample") -> None:
        """Say that ``(level, stat)`` tables will be wanted at ``steps``: the next read at those
        steps reads them along, so that a reader that comes later (the report's diagnosis)
        finds them without reading the store's values again."""
        key, _ = self._step_key(steps)
        with self._lock:
            pending = self._wanted.setdefault(key, [])
            pending += [(str(lv), str(st)) for lv, st in keys if (str(lv), str(st), key) not in self._tables]

    @property
    def _total_keys(self) -> list[tuple[str, str]]:
        index = self._index[self._index["level"].isin(Level.TOTALS)]
        return list(dict.fromkeys(zip(index["level"], index["stat"])))

    def matrix(self, level: str, stat: str, *, steps: Steps = "sample",
               role: str | Iterable[str] | None = None) -> pd.DataFrame:
        """One ``(level, stat)`` table (see :meth:`matrices`)."""
        return self.matrices([(level, stat)], steps=steps, role=role)[(level, stat)]

    def at_step(self, level: str, stat: str, step: int) -> pd.Series | None:
        """One statistic of every name at one step (None when not recorded there)."""
        table = self.matrix(level, stat, steps=[step])
        return None if table.empty or step not in table.index else table.loc[step]

    @_once
    def totals(self) -> pd.DataFrame:
        """The model and metric values over every step as a long frame ``step, level, name,
        stat, value`` (ordered by level, statistic and step; a value written as NaN is a row),
        read with the first table over every step."""
        tables = self.matrices(self._total_keys, steps="all")
        parts = [long_rows(t).assign(level=lv, stat=st) for (lv, st), t in tables.items() if not t.empty]
        columns = ["step", "level", "name", "stat", "value"]
        if not parts:
            return pd.DataFrame({c: pd.Series(dtype=float if c == "value" else object) for c in columns})
        # one name per model or metric series, and a table holds only the steps at which it was
        # written: every row is a written value (NaN included)
        return pd.concat(parts, ignore_index=True)[columns]

    def histograms(self, level: str = Level.LAYER, name: str | Iterable[str] | None = None,
                   steps: Iterable[int] | None = None) -> pd.DataFrame:
        """``Run.histograms`` (the long frame ``step, level, name, log2_bucket, count``), each
        choice of names and steps read once and kept."""
        names = None if name is None else ((name,) if isinstance(name, str) else tuple(name))
        chosen = None if steps is None else tuple(sorted({int(s) for s in steps}))
        key = ("histograms", level, (names, chosen))
        with self._lock:
            if key not in self._tables:
                hist = self.run.histograms(level=level, name=None if names is None else list(names),
                                           steps=None if chosen is None else list(chosen))
                self._tables[key] = hist if self.until is None else hist[hist["step"] <= self.until]
        return self._tables[key]

    def metrics(self) -> pd.DataFrame:
        """User-logged values as a wide table indexed by step (``Run.metrics``)."""
        df = self.totals[self.totals["level"] == Level.METRIC]
        if df.empty:
            return pd.DataFrame()
        return df.pivot_table(index="step", columns="stat", values="value", aggfunc="last", dropna=False)


def long_rows(table: pd.DataFrame) -> pd.DataFrame:
    """A steps x names table as rows ``step, name, value``, by step then column, every cell
    (NaN included)."""
    n_steps, n_names = table.shape
    return pd.DataFrame({"step": np.repeat(table.index.to_numpy(dtype=np.int64), n_names),
                         "name": np.tile(np.asarray(table.columns, dtype=object), n_steps),
                         "value": table.to_numpy(dtype=float).ravel()})


#: What readers accept as a run: a view, a run, a run directory; many also take a long
#: frame (columns ``step, level, name, depth, stat, value`` as from ``Run.frame()``).
RunSource = Union[RunView, Run, str, Path]


def view_of(data: RunSource, *, max_steps: int | None = DEFAULT_MAX_STEPS, until: int | None = None) -> RunView:
    """``data`` if it is a view (whatever its ``max_steps`` and ``until``), else a new view of
    the run or path."""
    if isinstance(data, RunView):
        return data
    return RunView(data, max_steps=max_steps, until=until)
