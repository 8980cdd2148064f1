"""The ``histograms`` table: log2-magnitude histograms of gradients, stored sparsely.

One row per recorded histogram of a layer (``level='layer'``) or of the model
(``level='model'``, name ``''``) at a step. ``buckets`` holds only the nonzero
buckets: ``n`` little-endian int16 bucket exponents ``e`` followed by their ``n``
int64 counts (bucket ``e`` counts the elements with ``2**e <= |g| < 2**(e+1)``, see
:mod:`gradsight.stats.histogram`); an empty blob is a histogram with no nonzero
finite element.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

import numpy as np

from gradsight.store.packed import MAX_SQL_VARS

DDL = """
CREATE TABLE IF NOT EXISTS histograms (
    step    INTEGER NOT NULL,
    level   TEXT NOT NULL,           -- 'layer' | 'model'
    name    TEXT NOT NULL,           -- the layer ('' for the model)
    buckets BLOB NOT NULL,           -- sparse: int16 bucket exponents, then int64 counts
    PRIMARY KEY (step, level, name)
) WITHOUT ROWID;
"""

INSERT = "INSERT OR REPLACE INTO histograms(step, level, name, buckets) VALUES (?,?,?,?)"

#: Columns of :func:`read`.
COLUMNS = ["step", "level", "name", "log2_bucket", "count"]

_BUCKET = np.dtype("<i2")
_COUNT = np.dtype("<i8")


def encode(buckets: np.ndarray, counts: np.ndarray) -> bytes:
    """The blob of a histogram given by its nonzero buckets and their counts."""
    return np.asarray(buckets, dtype=_BUCKET).tobytes() + np.asarray(counts, dtype=_COUNT).tobytes()


def decode(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(buckets, counts)`` (int64 arrays) of a blob written by :func:`encode`."""
    n = len(blob) // (_BUCKET.itemsize + _COUNT.itemsize)
    buckets = np.frombuffer(blob, dtype=_BUCKET, count=n).astype(np.int64)
    counts = np.frombuffer(blob, dtype=_COUNT, count=n, offset=n * _BUCKET.itemsize).astype(np.int64)
    return buckets, counts


def rows(step: int, keys: Sequence[tuple[str, str]], bucket_lo: int, dense: np.ndarray) -> list[tuple]:
    """Table rows of dense histograms ``dense[i]`` (column 0 is bucket ``bucket_lo``) named ``keys[i]``."""
    out = []
    for (level, name), hist in zip(keys, dense):
        nz = np.flatnonzero(hist)
        out.append((int(step), level, name, encode(nz + bucket_lo, hist[nz])))
    return out


def read(conn: sqlite3.Connection, level: str | None = "layer", name: str | Iterable[str] | None = None,
         steps: Iterable[int] | None = None, *, has_table: bool | None = None):
    """Histograms as a long frame with columns :data:`COLUMNS`, one row per nonzero
    bucket, ordered by step, level, name and bucket; empty when none were recorded
    (also for a store written before histograms existed)."""
    import pandas as pd

    if has_table is None:
        has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='histograms'").fetchone()
    if not has_table:
        return _empty()
    where, args = [], []
    if level is not None:
        where.append("level = ?")
        args.append(level)
    names = None if name is None else {name} if isinstance(name, str) else set(name)
    wanted_steps = None if steps is None else {int(s) for s in steps}
    for column, wanted in (("name", names), ("step", wanted_steps)):
        if wanted is not None and len(wanted) <= MAX_SQL_VARS:  # beyond SQLite's variable limit, filter after reading
            where.append(f"{column} IN ({','.join('?' * len(wanted))})")
            args += list(wanted)
    sql = "SELECT step, level, name, buckets FROM histograms"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY step, level, name"
    parts = {c: [] for c in COLUMNS}
    for step, lv, nm, blob in conn.execute(sql, args):
        if (names is not None and nm not in names) or (wanted_steps is not None and step not in wanted_steps):
            continue
        buckets, counts = decode(blob)
        parts["step"].append(np.full(len(buckets), step, dtype=np.int64))
        parts["level"] += [lv] * len(buckets)
        parts["name"] += [nm] * len(buckets)
        parts["log2_bucket"].append(buckets)
        parts["count"].append(counts)
    if not parts["step"]:
        return _empty()
    return pd.DataFrame({
        "step": np.concatenate(parts["step"]),
        "level": parts["level"],
        "name": parts["name"],
        "log2_bucket": np.concatenate(parts["log2_bucket"]),
        "count": np.concatenate(parts["count"]),
    })


def _empty():
    import pandas as pd

    return pd.DataFrame({"step": pd.Series(dtype=np.int64), "level": pd.Series(dtype=object),
                         "name": pd.Series(dtype=object), "log2_bucket": pd.Series(dtype=np.int64),
                         "count": pd.Series(dtype=np.int64)})


def matrix(frame, name: str, steps=None):
    """One name's histograms as a dense ``buckets x steps`` array.

    Args:
        frame: a frame of :func:`read` (one level).
        name: the layer ('' for the model).
        steps: the columns (default: the steps of ``name`` in ``frame``).

    Returns:
        ``(steps, buckets, counts)``: ascending step and bucket lists, int64 counts
        ``[len(buckets), len(steps)]`` (0 where a bucket was empty). ``buckets`` spans
        the lowest to the highest nonzero bucket of ``name``; empty when it has none.
    """
    part = frame[frame["name"] == name]
    step_list = sorted(int(s) for s in (part["step"].unique() if steps is None else steps))
    if part.empty or not step_list:
        return step_list, [], np.zeros((0, len(step_list)), dtype=np.int64)
    lo, hi = int(part["log2_bucket"].min()), int(part["log2_bucket"].max())
    col = {s: k for k, s in enumerate(step_list)}
    out = np.zeros((hi - lo + 1, len(step_list)), dtype=np.int64)
    keep = part["step"].isin(col)
    rows = part["log2_bucket"].to_numpy()[keep.to_numpy()] - lo
    cols = np.fromiter((col[int(s)] for s in part["step"][keep]), dtype=np.int64)
    np.add.at(out, (rows, cols), part["count"].to_numpy()[keep.to_numpy()])
    return step_list, list(range(lo, hi + 1)), out
