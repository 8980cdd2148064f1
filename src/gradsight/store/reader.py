"""Reading runs: :func:`open_run` and :class:`Run`. Reading never modifies a store."""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradsight._errors import RunError
from gradsight._text import few
from gradsight.display import card_html
from gradsight.store.access import connect_readonly
from gradsight.store.packed import MAX_SQL_VARS, PACKED_TABLES, Catalog, layout, read_long, read_matrix
from gradsight.store.roles import as_roles, row_roles
from gradsight.store.schema import DB_NAME, READABLE_VERSIONS, SCHEMA_VERSION, RowKind, Level

_REQUIRED_TABLES = {"meta", "params", "layers", "series", "steps"}  # and the values' (packed.layout)

#: ``depths(level, name, depth)``: the depth of a name at a series level ('layer',
#: 'block', 'module'; a parameter has its layer's), from the ``layers`` row of the
#: kind that level describes. One name can have a ``layer`` and a ``block`` row; a
#: module's statistics take the ``module`` row, else the ``block`` row, else the
#: ``layer`` row; a store with one row per name (schema version 1) falls back to it.
_DEPTHS = """
    depths(level, name, depth) AS (
        SELECT level, name, depth FROM (
            SELECT lv.level AS level, l.name AS name, l.depth AS depth,
                   ROW_NUMBER() OVER (
                       PARTITION BY lv.level, l.name
                       ORDER BY CASE WHEN l.kind = lv.level THEN 0
                                     WHEN l.kind = 'block' THEN 1
                                     WHEN l.kind = 'layer' THEN 2
                                     ELSE 3 END
                   ) AS pick
            FROM layers l
            CROSS JOIN (SELECT 'layer' AS level UNION ALL SELECT 'block' UNION ALL SELECT 'module') lv
        ) WHERE pick = 1
    )
"""


def resolve_run(path: str | Path) -> Path:
    """The run a path names, the one rule of every command that reads one run: a run
    directory or its store file as given, or the one run below a folder that holds
    exactly one (``out/`` holding ``out/gradsight/gradsight.sqlite`` -> ``out/gradsight``).

    Raises:
        RunError: the path does not exist or cannot be read, or it is a folder holding no
            run or several (the error names them).
    """
    p = Path(path)
    try:
        if not p.exists():
            raise RunError(f"no run at {p}: the path does not exist")
        if not p.is_dir() or (p / DB_NAME).exists():
            return p
        found = list_runs(p)
    except PermissionError:
        raise RunError(f"{p} cannot be read: permission denied (ask its owner, or copy the run)") from None
    if len(found) == 1:
        return found[0]
    if not found:
        raise RunError(f"{p} is not a gradsight run: it has no {DB_NAME}, and no folder below it has one")
    shown = few([str(r) for r in found], MAX_NAMED_RUNS, " or ")
    raise RunError(f"{p} holds {len(found)} runs, not one: did you mean {shown}?")


def _resolve_db(path: str | Path) -> Path:
    p = resolve_run(path)
    return p / DB_NAME if p.is_dir() else p


#: The candidate runs an ambiguous path's error names, at most.
MAX_NAMED_RUNS = 5

#: The folder name the integrations and scripts give a run (``<output_dir>/gradsight``).
DEFAULT_RUN_FOLDER = "gradsight"


def folder_name(run_dir: str | Path) -> str:
    """A run's name from its folder: the basename, or the parent folder's name when the
    basename is the default ``gradsight`` (``out-shakespeare/gradsight`` -> ``out-shakespeare``)."""
    path = Path(run_dir)
    if path.name == DEFAULT_RUN_FOLDER:
        parent = path.resolve().parent if not path.parent.name else path.parent
        return parent.name or path.name
    return path.name


def _check_permissions(db_path: Path, after: BaseException | None = None) -> None:
    """Raise a permission error as one: the store or its ``-wal``/``-shm`` cannot be read
    or, ``after`` SQLite failed, a killed run's ``-shm`` index cannot be created."""
    for f in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        if f.exists() and not os.access(f, os.R_OK):
            raise RunError(f"{f} cannot be read: permission denied (ask its owner, or copy the run)")
    if after is not None and not os.access(db_path.parent, os.W_OK) and Path(f"{db_path}-wal").exists() \
            and not Path(f"{db_path}-shm").exists():
        raise RunError(f"{db_path} was not closed by its writer and {db_path.parent} is not writable, so "
                       "SQLite cannot build its -shm index; copy the run directory and open the copy")


def _check_schema_version(db_path: Path, version: Any) -> None:
    """Raise :class:`RunError` unless this gradsight reads stores of schema ``version``
    (:data:`~gradsight.store.schema.READABLE_VERSIONS`)."""
    readable = f"{min(READABLE_VERSIONS)} to {max(READABLE_VERSIONS)}"
    if version is None:
        raise RunError(f"{db_path} is not a gradsight store: its meta table has no schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise RunError(f"{db_path} has schema_version {version!r}, not an integer: it is corrupted "
                       "or not a gradsight store")
    if version > SCHEMA_VERSION:
        raise RunError(f"{db_path} has schema version {version}, newer than this gradsight reads ({readable}); "
                       "upgrade gradsight to read it")
    if version not in READABLE_VERSIONS:
        raise RunError(f"{db_path} has schema version {version}, which this gradsight does not read "
                       f"(it reads {readable}); open it with the gradsight version that wrote it")


def open_run(path: str | Path) -> Run:
    """Open a recorded run read-only.

    Args:
        path: a run directory (as given to ``gs.watch(run_dir=...)``), its
            ``gradsight.sqlite`` file, or a folder holding exactly one run below it
            (:func:`resolve_run`).

    Raises:
        RunError: the path is missing or cannot be read (permissions), is not a
            run or holds several, or its database is empty, corrupted, not a gradsight store or of a
            schema version this gradsight does not read.
    """
    return Run(path)


def list_runs(parent: str | Path) -> list[Path]:
    """Run directories at or below ``parent`` (sorted): what a command that reads several
    runs takes from a folder (one that reads one run: :func:`resolve_run`)."""
    parent = Path(parent)
    return sorted(p.parent for p in parent.rglob(DB_NAME))


class Run:
    """A recorded run, read-only. Create with :func:`open_run`."""

    def __init__(self, path: str | Path) -> None:
        self.db_path = _resolve_db(path)
        self.path = self.db_path.parent
        _check_permissions(self.db_path)
        if self.db_path.stat().st_size == 0:
            raise RunError(f"{self.db_path} is empty: the run never wrote its store")
        try:
            self._conn = connect_readonly(self.db_path)
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            _check_permissions(self.db_path, after=exc)
            raise RunError(f"{self.db_path} is corrupted or not a SQLite database ({exc})") from None
        try:
            self.meta: dict[str, Any] = self._checked_meta(tables)
        except RunError:
            self._conn.close()
            raise
        self._tables = tables  # the store's tables, as opened
        self._catalog = Catalog(self._conn, tables)

    def _checked_meta(self, tables: set[str]) -> dict[str, Any]:
        """The ``meta`` table, once the store has every table and a schema version this reads."""
        missing = _REQUIRED_TABLES - tables | (set() if layout(tables) else set(PACKED_TABLES))
        if missing:
            raise RunError(f"{self.db_path} is not a gradsight store (missing tables: {', '.join(sorted(missing))})")
        try:
            meta = {k: json.loads(v) for k, v in self._conn.execute("SELECT key, value FROM meta")}
        except (sqlite3.DatabaseError, json.JSONDecodeError, TypeError) as exc:
            raise RunError(f"{self.db_path} is corrupted ({exc})") from None
        _check_schema_version(self.db_path, meta.get("schema_version"))
        return meta

    # -- metadata ---------------------------------------------------------------
    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r}, steps={len(self.steps())})"

    def _repr_html_(self) -> str:
        """The run in a notebook: name, status, steps, gradient norm, depth profile, findings
        (:func:`gradsight.display.card_html`)."""
        return card_html(self)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        """The name given to ``gs.watch(..., name=...)``, else the run's folder name
        (:func:`folder_name`: the parent folder's for the default ``.../gradsight``)."""
        return folder_name(self.path) if self.named_by_folder else str(self.meta["name"])

    @property
    def named_by_folder(self) -> bool:
        """True when :attr:`name` comes from the run's path, not from a given name (the
        writer records the folder's basename when no name is given)."""
        given = self.meta.get("name")
        return not given or given in (self.path.name, DEFAULT_RUN_FOLDER)

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "unknown"))

    @property
    def config(self) -> dict:
        return dict(self.meta.get("config") or {})

    def _query(self, sql: str, params: Iterable[Any] = ()) -> pd.DataFrame:
        try:
            return pd.read_sql_query(sql, self._conn, params=list(params))
        except (sqlite3.DatabaseError, pd.errors.DatabaseError) as exc:
            raise RunError(f"{self.db_path} could not be read ({exc.__cause__ or exc})") from None

    def _json_lists(self, texts: Iterable[Any], column: str) -> list[list]:
        """The JSON lists stored in a text column; :class:`RunError` naming the column for any other value."""
        out = []
        for text in texts:
            try:
                value = json.loads(text)
            except (TypeError, ValueError):
                value = None
            if not isinstance(value, list):
                raise RunError(f"{self.db_path} is corrupted: {column} holds {text!r}, not a JSON list")
            out.append(value)
        return out

    def params(self) -> pd.DataFrame:
        """One row per parameter: name, layer, shape, numel, dtype, trainable, aliases, position, depth."""
        df = self._query(
            f"WITH {_DEPTHS} SELECT p.*, d.depth FROM params p "
            "LEFT JOIN depths d ON d.level = 'layer' AND d.name = p.layer ORDER BY p.position"
        )
        df["shape"] = [tuple(v) for v in self._json_lists(df["shape"], "params.shape")]
        df["aliases"] = self._json_lists(df["aliases"], "params.aliases")
        df["trainable"] = df["trainable"].astype(bool)
        return df

    def layers(self, kind: str | None = RowKind.LAYER, *, role: str | Iterable[str] | None = None) -> pd.DataFrame:
        """Modules in forward-execution order: ``kind='layer'`` (default) the modules
        owning parameters, ``'block'`` residual blocks, ``'module'`` other modules
        with activation statistics, ``None`` all of them.

        Returns:
            Columns ``name, depth, module_type, kind, role, tied``: ``role`` as in
            :mod:`gradsight.store.roles` (derived from the rows for stores written
            before roles were recorded), ``tied`` True for a layer whose parameter has
            other names. ``role`` keeps only rows of these roles (``None``/``'all'``: every row).
        """
        df = self._layer_rows()
        if kind is None:
            df = df.sort_values(["kind", "depth", "name"], kind="mergesort")
        else:
            df = df[df["kind"] == kind].sort_values(["depth", "name"], kind="mergesort")
        roles = as_roles(role)
        if roles is not None:
            df = df[df["role"].isin(roles)]
        return df.reset_index(drop=True)

    def _layer_rows(self) -> pd.DataFrame:
        """Every ``layers`` row with its ``role`` and ``tied`` (recorded, or derived as the
        writer derives them: :func:`gradsight.store.roles.row_roles`)."""
        columns = set(self._query("PRAGMA table_info(layers)")["name"])
        extra = "role, tied" if {"role", "tied"} <= columns else "NULL AS role, NULL AS tied"
        df = self._query(f"SELECT name, depth, module_type, kind, {extra} FROM layers")
        if df["role"].isna().any() or df["tied"].isna().any():
            params = self._query("SELECT layer, numel, trainable, aliases FROM params")
            params = params[params["trainable"].astype(bool)]
            numel = {str(k): int(v) for k, v in params.groupby("layer")["numel"].sum().items()}
            aliased = {str(n) for n, a in zip(params["layer"], self._json_lists(params["aliases"], "params.aliases"))
                       if a}
            rows = [(n, None if pd.isna(d) else int(d), t, k) for n, d, t, k in
                    zip(df["name"], df["depth"], df["module_type"], df["kind"])]
            derived = row_roles(rows, numel, aliased, [tuple(f) for f in self.meta.get("frozen_layers") or ()],
                                self.meta.get("depth_unplaced") or ())
            df["role"] = [r if isinstance(r, str) else d[0] for r, d in zip(df["role"], derived)]
            df["tied"] = [t if pd.notna(t) else d[1] for t, d in zip(df["tied"], derived)]
        df["role"] = df["role"].astype(str)
        df["tied"] = df["tied"].astype(bool)
        return df

    def roles(self, level: str = Level.LAYER) -> dict[str, str]:
        """``name -> role`` of the names at a series level (``layer``, ``param``,
        ``module``, ``block``): a parameter has its layer's role, a name its row of the
        level's kind (else, as for depths, its ``block``, ``layer`` or ``module`` row)."""
        params = self._query("SELECT name, layer FROM params") if level == Level.PARAM else None
        return level_roles(self._layer_rows(), level, params)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """The rows of a small query, without a frame (what a reader following a live run asks often)."""
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise RunError(f"{self.db_path} could not be read ({exc})") from None

    def steps(self, after: int | None = None) -> list[int]:
        """Recorded steps, ascending (only those after ``after`` when given)."""
        if after is None:
            return [int(s) for (s,) in self._rows("SELECT step FROM steps ORDER BY step")]
        return [int(s) for (s,) in self._rows("SELECT step FROM steps WHERE step > ? ORDER BY step", [int(after)])]

    def last_step(self) -> int | None:
        """The last recorded step (None: none yet); one small query, for readers following a live run."""
        last = self._rows("SELECT max(step) FROM steps")[0][0]
        return None if last is None else int(last)

    def data_version(self) -> int:
        """A number that changes when another connection (the recording process) has committed
        since it was last asked (SQLite's ``PRAGMA data_version``): a reader following a live
        run reads again only then."""
        return int(self._rows("PRAGMA data_version")[0][0])

    def count_steps(self, until: int | None = None) -> int:
        """How many steps are recorded (up to ``until``, when given; one small query)."""
        if until is None:
            return int(self._rows("SELECT count(*) FROM steps")[0][0])
        return int(self._rows("SELECT count(*) FROM steps WHERE step <= ?", [int(until)])[0][0])

    def layout_version(self) -> tuple:
        """What changes when the run's names or statistics do: its series (a new layer or
        statistic adds some) and its ``layers`` rows (replaced when the forward order is
        learnt). A reader that keeps a run's layout (``RunView``) reads it again when this
        changes; a small query."""
        series = self._rows("SELECT count(*), max(id) FROM series")[0]
        return (*series, hash(tuple(self._rows("SELECT name, kind, depth FROM layers ORDER BY name, kind"))))

    def read_matrix(self, ids: Sequence[int], steps: Sequence[int] | None = None) -> tuple:
        """The values of series ``ids`` (unique, in any order) at ``steps`` (None: all) as arrays,
        no frame built: ``(step_values, values, present)`` as :func:`gradsight.store.packed.read_matrix`
        gives them (the steps holding any of the values; float64 ``[steps, ids]``; True where written)."""
        return self._values(np.asarray(ids, dtype=np.int64), steps, wide=True)

    def reload_meta(self) -> dict[str, Any]:
        """Read ``meta`` again (a live run's status, dropped steps and store errors change) and return it."""
        self.meta = self._checked_meta(self._tables)
        return self.meta

    def stats(self, level: str | None = None) -> list[str]:
        """Names of the statistics recorded (optionally at one level)."""
        sql = "SELECT DISTINCT stat FROM series"
        args: list[Any] = []
        if level is not None:
            sql += " WHERE level = ?"
            args.append(level)
        return sorted(self._query(sql, args)["stat"])

    # -- data -------------------------------------------------------------------
    def frame(
        self,
        *,
        level: str | Iterable[str] | None = None,
        stat: str | Iterable[str] | None = None,
        name: str | Iterable[str] | None = None,
        steps: Iterable[int] | None = None,
        role: str | Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """All recorded values in long format, optionally filtered.

        ``role`` keeps the rows of names with these roles (:mod:`gradsight.store.roles`;
        ``None``/``'all'``: every row); model and metric rows have no role and go.

        Returns:
            DataFrame with columns ``step, level, name, layer, depth, role, stat,
            value``: ``layer`` is the owning layer of a parameter (the layer itself for
            layer rows), ``depth`` its forward-execution index and ``role`` its role
            (NaN/None for model and metric rows), ``value`` a float (NaN where the
            statistic was NaN).
        """
        roles = as_roles(role)
        where, args = [], []
        for col, val in (("se.level", level), ("se.stat", stat), ("se.name", name)):
            if val is None:
                continue
            vals = [val] if isinstance(val, str) else list(val)
            where.append(f"{col} IN ({','.join('?' * len(vals))})")
            args.extend(vals)
        if steps is not None:
            st = [int(s) for s in steps]
            steps = st
        if roles is not None:  # read only the series of names with these roles
            ids = self._series_ids_with_roles(roles)
            if len(ids) <= MAX_SQL_VARS:  # beyond SQLite's variable limit, filter after reading
                where.append(f"se.id IN ({','.join('?' * len(ids))})")
                args.extend(ids)
        sql = f"""
            WITH {_DEPTHS}
            SELECT se.id AS id, se.level AS level, se.name AS name,
                   CASE se.level WHEN 'param' THEN p.layer
                                 WHEN 'model' THEN NULL
                                 WHEN 'metric' THEN NULL
                                 ELSE se.name END AS layer,
                   d.depth AS depth, se.stat AS stat
            FROM series se
            LEFT JOIN params p ON se.level = 'param' AND p.name = se.name
            LEFT JOIN depths d ON d.level = (CASE se.level WHEN 'param' THEN 'layer' ELSE se.level END)
                              AND d.name = (CASE se.level WHEN 'param' THEN p.layer ELSE se.name END)
        """
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY se.id"
        series = self._query(sql, args)
        step_col, series_col, value_col = self._values(series["id"].to_numpy(dtype=np.int64), steps)
        if len(value_col):
            df = series.iloc[np.searchsorted(series["id"].to_numpy(dtype=np.int64), series_col)]
            df = df.drop(columns="id").reset_index(drop=True)
            df.insert(0, "step", step_col)
            df["value"] = value_col
        else:  # as an empty query result: every column of type object
            df = pd.DataFrame({c: pd.Series(dtype=object) for c in
                               ("step", "level", "name", "layer", "depth", "stat", "value")})
        df["value"] = df["value"].astype(float)
        df["depth"] = df["depth"].astype(float)
        df.insert(5, "role", self._role_column(df))
        if roles is not None:
            df = df[df["role"].isin(roles)].reset_index(drop=True)
        return df

    def _values(self, ids: np.ndarray, steps: Iterable[int] | None, *, wide: bool = False) -> tuple:
        """The values of series ``ids`` at ``steps`` (None: all), in either layout: ``(step,
        series, value)`` arrays (:func:`gradsight.store.packed.read_long`; ``ids`` ascending),
        or with ``wide`` ``(steps, values, present)`` (:func:`gradsight.store.packed.read_matrix`)."""
        try:
            if wide:
                return read_matrix(self._conn, ids, steps, with_present=True, catalog=self._catalog)
            return read_long(self._conn, ids, steps, catalog=self._catalog)
        except sqlite3.DatabaseError as exc:
            raise RunError(f"{self.db_path} could not be read ({exc})") from None

    def _series_ids_with_roles(self, roles: Iterable[str]) -> list[int]:
        """Ids of the series whose names have one of ``roles`` (model and metric series have none)."""
        keep = set(roles)
        series = self._query("SELECT id, level, name FROM series")
        ids: list[int] = []
        for level, part in series.groupby("level", sort=False):
            if level in Level.TOTALS:
                continue
            of = self.roles(str(level))
            ids += [int(i) for i, n in zip(part["id"], part["name"]) if of.get(n) in keep]
        return ids

    def _role_column(self, df: pd.DataFrame) -> pd.Series:
        """The role of each row of a long frame (None for model and metric rows)."""
        out = pd.Series(None, index=df.index, dtype=object)
        for level, idx in df.groupby("level", sort=False).indices.items():
            if level in Level.PER_MODULE or level == Level.PARAM:
                roles = self.roles(Level.LAYER if level == Level.PARAM else level)
                out.iloc[idx] = df["layer"].iloc[idx].map(roles).to_numpy()
        return out.astype(df["layer"].dtype)  # the store's text type, as every other text column

    def series(self, stat: str, level: str = Level.LAYER, steps: Iterable[int] | None = None, *,
               role: str | Iterable[str] | None = None) -> pd.DataFrame:
        """One statistic as a wide table: index = step, columns = names in forward order
        (:func:`column_order`, the order every reader's tables have).

        Args:
            stat: the statistic.
            level: ``param``, ``layer``, ``model``, ``module``, ``block`` or ``metric``.
            steps: only these steps (default: all). Reading goes through the
                series index, so a subset of steps of a long run is cheap.
            role: only names with these roles (:mod:`gradsight.store.roles`;
                ``None``/``'all'``: all names).

        Returns:
            The steps at which ``stat`` was written for any name, x names; NaN where
            nothing was written. Empty when the run has no such series.
        """
        index = self.series_index()
        roles = as_roles(role)
        tables = self.read_tables(index, [(level, stat)], steps,
                                  roles=None if roles is None else {level: self.roles(level)},
                                  role=roles, layer_order=self._layer_order())
        return tables.get((level, stat), pd.DataFrame())

    def series_index(self) -> pd.DataFrame:
        """Every series of the run: ``id, level, name, stat, depth, position`` (``depth``: the
        forward rank of the name's row of the level's kind, a parameter's that of its layer;
        ``position``: a parameter's place in ``named_parameters()``, else NaN)."""
        return self._query(
            f"""WITH {_DEPTHS}
               SELECT se.id AS id, se.level AS level, se.name AS name, se.stat AS stat,
                      d.depth AS depth, p.position AS position
               FROM series se
               LEFT JOIN params p ON se.level = 'param' AND p.name = se.name
               LEFT JOIN depths d ON d.level = (CASE se.level WHEN 'param' THEN 'layer' ELSE se.level END)
                                 AND d.name = (CASE se.level WHEN 'param' THEN p.layer ELSE se.name END)
               ORDER BY se.id""")

    def _layer_order(self) -> list[str]:
        return list(self.layers()["name"])

    def read_tables(self, index: pd.DataFrame, keys: Iterable[tuple[str, str]], steps: Iterable[int] | None = None,
                    *, roles: dict[str, dict[str, str]] | None = None, role: Iterable[str] | None = None,
                    layer_order: Sequence[str] = (), written: dict | None = None
                    ) -> dict[tuple[str, str], pd.DataFrame]:
        """Several ``(level, stat)`` wide tables read in one pass over the values.

        Args:
            index: :meth:`series_index` (a reader that keeps it passes it again).
            keys: the ``(level, stat)`` pairs to read.
            steps: only these steps (None: all).
            roles: per level, ``name -> role`` (needed with ``role``).
            role: only names with these roles (None: all).
            layer_order: the run's layers in forward order (:func:`column_order`).
            written: a dict to fill with ``(level, stat) -> `` boolean array of each table's
                shape: True where a value was written (a non-finite value is written as NaN),
                False where it is missing (the module did not run at that step).

        Returns:
            ``(level, stat) -> DataFrame``: each table holds the steps at which that
            statistic was written for any of its names (index ``step``), its names in
            :func:`column_order` (columns ``name``); keys without series are left out.
        """
        keys = list(dict.fromkeys(keys))
        wanted = index[pd.MultiIndex.from_frame(index[["level", "stat"]]).isin(keys)] if keys else index.iloc[:0]
        if role is not None and not wanted.empty:
            keep = set(role)
            of = roles or {}
            wanted = wanted[[of.get(lv, {}).get(n) in keep for lv, n in zip(wanted["level"], wanted["name"])]]
        if wanted.empty:
            return {}
        blocks = {}
        for key, part in wanted.groupby(["level", "stat"], sort=False):
            names = column_order(str(key[0]), part["name"], part["depth"], part["position"], layer_order)
            blocks[(str(key[0]), str(key[1]))] = part.set_index("name").loc[names, "id"]
        if steps is not None:
            steps = sorted({int(x) for x in steps})
            if not steps:
                return {key: _empty_table(ids.index) for key, ids in blocks.items()}
        ids = np.concatenate([b.to_numpy(dtype=np.int64) for b in blocks.values()])
        step_values, matrix, present = self._values(ids, steps, wide=True)
        out, start = {}, 0
        for key, b in blocks.items():
            cols = slice(start, start + len(b))
            start += len(b)
            rows = np.flatnonzero(present[:, cols].any(axis=1)) if len(step_values) else np.zeros(0, np.int64)
            if not len(rows):
                out[key] = _empty_table(b.index)
                continue
            table = pd.DataFrame(matrix[rows, cols], index=pd.Index(step_values[rows], name="step"),
                                 columns=pd.Index(list(b.index), name="name"), copy=False)
            if written is not None:  # which cells hold a written value (a NaN for a non-finite one)
                written[key] = present[rows, cols]
            out[key] = table
        return out

    def histograms(self, level: str = Level.LAYER, name: str | Iterable[str] | None = None,
                   steps: Iterable[int] | None = None) -> pd.DataFrame:
        """Log2-magnitude gradient histograms (``gs.watch(..., histograms=...)``).

        Args:
            level: ``layer`` or ``model``.
            name: only these layers (default: all).
            steps: only these steps (default: all with a histogram).

        Returns:
            Long frame with columns ``step, level, name, log2_bucket, count``, one row
            per nonzero bucket: ``count`` elements had ``2**log2_bucket <= |g| <
            2**(log2_bucket + 1)`` (the gradient as stored, times the loss scale with a
            GradScaler); empty when the run recorded none.
        """
        from gradsight.store import histograms

        try:
            return histograms.read(self._conn, level, name, steps, has_table="histograms" in self._tables)
        except sqlite3.DatabaseError as exc:
            raise RunError(f"{self.db_path} could not be read ({exc})") from None

    def metrics(self) -> pd.DataFrame:
        """User-logged values (``monitor.log``) as a wide table indexed by step."""
        df = self.frame(level=Level.METRIC)
        if df.empty:
            return pd.DataFrame()
        return df.pivot_table(index="step", columns="stat", values="value", aggfunc="last", dropna=False)

    def layer_summary(self, stat: str = "grad_norm", *, role: str | Iterable[str] | None = None) -> pd.DataFrame:
        """Per layer: depth, role, mean/median/min/max of ``stat`` over recorded steps
        (``role``: only layers with these roles)."""
        columns = ["name", "depth", "role", "mean", "median", "min", "max"]
        df = self.frame(level=Level.LAYER, stat=stat, role=role)
        if df.empty:
            return pd.DataFrame(columns=columns)
        g = df.groupby(["name"], sort=False)
        out = g["value"].agg(["mean", "median", "min", "max"]).reset_index()
        out["depth"] = g["depth"].first().values
        out["role"] = g["role"].first().values
        return out.sort_values(["depth", "name"]).reset_index(drop=True)[columns]



def level_roles(rows: pd.DataFrame, level: str, params: pd.DataFrame | None = None) -> dict[str, str]:
    """``name -> role`` at a series level from the ``layers`` rows (``name, kind, role``) and,
    for the ``param`` level, the parameters (``name, layer``): see :meth:`Run.roles`."""
    kind = RowKind.LAYER if level == Level.PARAM else level
    preference = [kind] + [k for k in (RowKind.BLOCK, RowKind.LAYER, RowKind.MODULE) if k != kind]
    out: dict[str, str] = {}
    for k in reversed(preference):
        part = rows[rows["kind"] == k]
        out.update(zip(part["name"], part["role"]))
    if level == Level.PARAM:
        return {n: out[ln] for n, ln in zip(params["name"], params["layer"]) if ln in out}
    return out


def _empty_table(names: Iterable[str]) -> pd.DataFrame:
    return pd.DataFrame(columns=pd.Index(list(names), name="name"), index=pd.Index([], name="step", dtype=np.int64),
                        dtype=float)


def column_order(level: str, names: Iterable[str], depths: Iterable[Any] = (), positions: Iterable[Any] = (),
                 layer_order: Sequence[str] = ()) -> list[str]:
    """The one order of a level's names, as every wide table of a run has it (``Run.series``,
    the query layer, the plots, the report and the diagnosis).

    Layer and parameter names sort by their layer's forward rank (``depths``), a layer's
    parameters in ``named_parameters()`` order (``positions``), names without a rank last;
    ties keep the order given (series are created in that order).
    Names of other levels (``module``, ``block``: activation statistics) mix rows of kinds
    ranked apart, so they are placed by the first layer inside them in ``layer_order`` (a
    container before its contents); a module without parameters goes after the last layer of
    its parent (:func:`forward_order`), ties by their own rank.
    """
    names = list(names)
    depths = list(depths) or [None] * len(names)
    positions = list(positions) or [None] * len(names)

    def number(x: Any) -> float:
        try:
            x = float(x)
        except (TypeError, ValueError):
            return math.inf
        return math.inf if math.isnan(x) else x

    ranked = [n for _, _, _, n in sorted((number(d), number(p), k, n)
                                         for k, (n, d, p) in enumerate(zip(names, depths, positions)))]
    ranked = list(dict.fromkeys(ranked))
    if level in (Level.LAYER, Level.PARAM) or not layer_order:
        return ranked
    return forward_order(ranked, layer_order)


def forward_order(names: Sequence[str], layer_order: Sequence[str]) -> list[str]:
    """``names`` (qualified module names of any kind) sorted into forward order, anchored on
    ``layer_order`` (the run's layers in forward order): by the first layer inside each (a
    container before its contents); a name with no layer inside goes after the last layer of
    its nearest parent that has one, and last of all without one. Ties keep the given order."""
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
        return (math.inf, 0, k)

    return [name for _, name in sorted(enumerate(names), key=key)]
