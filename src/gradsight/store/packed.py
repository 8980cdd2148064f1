"""How recorded values lie in the store: packed arrays (schema version 4), and the
row-per-value ``scalars`` table of older stores (version 3 and before), read alike.

A write of several series at one step (``Writer.write_scalars``) is one row of
``packed`` per *group* of series (a write of more than :data:`GROUP_MAX` values has
several groups; the model's and the metrics' series, read over every step, are a group of
their own), its values split into *segments*: each statistic of a level with at
least :data:`SEGMENT_MIN` values in the write is a segment (or several, of at most
:data:`GROUP_MAX`), the rest of the write is one, so one statistic of every layer is
decoded without the others. A ``series_groups`` row
holds a group's series ids, segment by segment (ascending within each: the series table
gives the order) and its segment lengths. ``packed.data`` starts with the end offset of
each segment (uint32), then each segment as one byte of encoding and its values:

- float32 where every value is exactly a float32 (what the recorder computes), with the
  positions and float64 values of the few that are not (a logged ``0.1``); float64
  (zlib-compressed when that saves 3%) when those are many; NaN and +-inf as themselves;
- float32 values as their four byte planes: a plane of equal bytes as one byte (the low
  mantissa bytes of counts and zeros), the plane of signs and exponents (and a plane of
  mostly zero bytes) deflated, the mantissa bytes of measured values as they are.

A later write of a series at a step replaces the earlier one, as ``INSERT OR REPLACE``
did in the row-per-value layout: readers take the value of the row written last
(highest ``rowid``).
"""

from __future__ import annotations

import sqlite3
import struct
import zlib
from collections.abc import Collection, Sequence

import numpy as np

#: The tables of the packed layout (schema version 4 on).
PACKED_SCHEMA = """
CREATE TABLE IF NOT EXISTS series_groups (
    id       INTEGER PRIMARY KEY,
    series   BLOB NOT NULL,          -- int64 little-endian series ids, segment by segment: the order of the values
    segments BLOB NOT NULL           -- int32 little-endian number of series of each segment
);
CREATE TABLE IF NOT EXISTS packed (
    grp  INTEGER NOT NULL REFERENCES series_groups(id),
    step INTEGER NOT NULL,
    data BLOB NOT NULL,              -- segment end offsets, then the segments (gradsight.store.packed)
    PRIMARY KEY (grp, step)
);
"""

#: The row-per-value layout of schema version 3 and before: read, never written.
ROW_SCHEMA = """
CREATE TABLE IF NOT EXISTS scalars (
    step   INTEGER NOT NULL,
    series INTEGER NOT NULL REFERENCES series(id),
    value  REAL,                     -- NULL stores NaN
    PRIMARY KEY (step, series)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS scalars_by_series ON scalars(series, step);
"""

#: Tables holding the values, per layout.
PACKED_TABLES = ("packed", "series_groups")
ROW_TABLES = ("scalars",)

#: A statistic of one level with at least this many values in one write is a segment of its own.
SEGMENT_MIN = 256

#: A group holds at most this many values (a longer segment is split): rows of at most
#: about 2 KB fill the store's 16 KB pages with little room left over.
GROUP_MAX = 512

#: SQLite page size of a store (set before it is created). Rows of many sizes up to 2 KB
#: leave a few percent of a 16 KB page over (of 4 KB pages, about 15%); 64 KB pages would
#: save a few percent more on long runs but make every small store about 1 MB.
PAGE_SIZE = 16384

#: Series ids or steps passed to one query at most (SQLite allows 32,766 variables).
MAX_SQL_VARS = 30_000

# Encodings of a segment (its first byte).
F32 = 1  # n float32 as byte planes (_planes)
F32_EXCEPT = 2  # uint32 k, k uint32 positions, k float64 values, then n float32 as byte planes
F64 = 3  # n float64
F64_ZLIB = 4  # n float64, zlib-compressed

# How one byte plane of float32 values is stored (its first byte).
_PLANE_CONSTANT = 0  # one byte: every value has it
_PLANE_RAW = 1  # n bytes
_PLANE_ZLIB = 2  # uint32 length, then the n bytes compressed (raw deflate: zlib without header and checksum)

#: Compressed bytes are kept when at most this fraction of the plain size.
_KEEP_COMPRESSED = 0.97


# -- encoding ---------------------------------------------------------------------------
def encode(values: np.ndarray) -> bytes:
    """One segment's values (float64) as bytes; exact: :func:`decode` gives back the same
    float64 values (any NaN as NaN, the sign of zero kept)."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        f32 = values.astype("<f4")
        inexact = np.flatnonzero((f32.astype(np.float64) != values) & ~np.isnan(values))
    k = len(inexact)
    if k == 0:
        return bytes((F32,)) + _planes(f32)
    if 4 + 12 * k < 4 * len(values):
        return b"".join((bytes((F32_EXCEPT,)), struct.pack("<I", k), inexact.astype("<u4").tobytes(),
                         values[inexact].astype("<f8").tobytes(), _planes(f32)))
    plain = values.astype("<f8").tobytes()
    packed = zlib.compress(plain, 1)
    if len(packed) <= _KEEP_COMPRESSED * len(plain):
        return bytes((F64_ZLIB,)) + packed
    return bytes((F64,)) + plain


def _planes(f32: np.ndarray) -> bytes:
    """float32 values as their 4 byte planes, lowest byte first: a plane whose bytes are all
    equal (the low mantissa bytes of counts and zeros) as one byte, the plane of signs and
    exponents, and a plane that is mostly zero bytes, deflated when that saves 3%, the others
    as they are (mantissa bytes of measured values are noise: compressing them costs time
    and saves nothing)."""
    out = []
    for p, plane in enumerate(f32.view(np.uint8).reshape(-1, 4).T):
        raw = plane.tobytes()
        if len(raw) and raw.count(raw[:1]) == len(raw):
            out.append(bytes((_PLANE_CONSTANT,)) + raw[:1])
            continue
        if p == 3 or 4 * raw.count(0) > len(raw):  # signs and exponents; mantissas of counts, zeros
            deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
            packed = deflate.compress(raw) + deflate.flush()
            if len(packed) <= _KEEP_COMPRESSED * len(raw):
                out.append(bytes((_PLANE_ZLIB,)) + struct.pack("<I", len(packed)) + packed)
                continue
        out.append(bytes((_PLANE_RAW,)) + raw)
    return b"".join(out)


def _planes_into(payload: bytes, n: int, offset: int, out: np.ndarray) -> None:
    """Fill ``out`` (uint8 ``[4, n]``) with the byte planes of :func:`_planes` bytes at ``offset``."""
    for p in range(4):
        mode = payload[offset]
        if mode == _PLANE_CONSTANT:
            out[p] = payload[offset + 1]
            offset += 2
        elif mode == _PLANE_RAW:
            out[p] = np.frombuffer(payload, dtype=np.uint8, count=n, offset=offset + 1)
            offset += 1 + n
        elif mode == _PLANE_ZLIB:
            (length,) = struct.unpack_from("<I", payload, offset + 1)
            out[p] = np.frombuffer(zlib.decompress(payload[offset + 5 : offset + 5 + length], -15), dtype=np.uint8)
            offset += 5 + length
        else:
            raise ValueError(f"unknown byte plane encoding {mode} of packed values")


def _same_layout_planes(segments_data: Sequence[bytes], n: int, planes: np.ndarray) -> np.ndarray:
    """Fill ``planes`` (uint8 ``[rows, 4, n]``) of the float32 segments whose byte planes are all
    stored constant or raw, many rows at once: rows of one length laid out as the first of
    that length are read as one array (a long run's short segments, such as the model and
    metric values of each step, are 100,000s of rows of a few bytes). Returns which rows
    were filled; the others are left to the row-by-row path."""
    done = np.zeros(len(segments_data), dtype=bool)
    if n > 64 or len(segments_data) < 64:  # long segments: the per-row cost is the values', not Python's
        return done
    lengths = np.fromiter((len(d) for d in segments_data), np.int64, len(segments_data))
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        first = bytes(segments_data[rows[0]])
        if first[0] != F32:
            continue
        layout, offset = [], 1
        for _ in range(4):
            mode = first[offset]
            if mode not in (_PLANE_CONSTANT, _PLANE_RAW):
                break
            layout.append((offset, mode))
            offset += 2 if mode == _PLANE_CONSTANT else 1 + n
        if len(layout) < 4 or offset != length:
            continue
        data = np.frombuffer(b"".join([segments_data[r] for r in rows]), dtype=np.uint8).reshape(len(rows), length)
        same = data[:, 0] == F32
        for offset, mode in layout:
            same &= data[:, offset] == mode
        rows, data = rows[same], data[same]
        for p, (offset, mode) in enumerate(layout):
            planes[rows, p, :] = data[:, offset + 1 : offset + 2] if mode == _PLANE_CONSTANT \
                else data[:, offset + 1 : offset + 1 + n]
        done[rows] = True
    return done


def decode_many(segments_data: Sequence[bytes], n: int) -> np.ndarray:
    """float64 ``[len(segments_data), n]``: :func:`decode` of each, the float32 ones in one pass."""
    out = np.empty((len(segments_data), n))
    planes = np.empty((len(segments_data), 4, n), dtype=np.uint8)
    f32 = _same_layout_planes(segments_data, n, planes)
    exceptions = []
    for r, data in enumerate(segments_data):
        if f32[r]:
            continue
        kind = data[0]
        if kind == F32:
            _planes_into(data, n, 1, planes[r])
            f32[r] = True
        elif kind == F32_EXCEPT:
            (k,) = struct.unpack_from("<I", data, 1)
            _planes_into(data, n, 5 + 12 * k, planes[r])
            f32[r] = True
            exceptions.append((r, np.frombuffer(data, dtype="<u4", count=k, offset=5),
                               np.frombuffer(data, dtype="<f8", count=k, offset=5 + 4 * k)))
        else:
            out[r] = decode(data, n)
    if f32.all():
        out[:] = planes.transpose(0, 2, 1).copy().view("<f4").reshape(len(segments_data), n)
    elif f32.any():
        out[f32] = planes[f32].transpose(0, 2, 1).copy().view("<f4").reshape(int(f32.sum()), n)
    for r, positions, exact in exceptions:
        out[r, positions] = exact
    return out


def decode(data: bytes, n: int) -> np.ndarray:
    """The ``n`` float64 values of one :func:`encode`-d segment."""
    kind = data[0]
    if kind in (F64, F64_ZLIB):
        plain = zlib.decompress(data[1:]) if kind == F64_ZLIB else data[1:]
        return np.frombuffer(plain, dtype="<f8", count=n).astype(np.float64)
    if kind not in (F32, F32_EXCEPT):
        raise ValueError(f"unknown encoding {kind} of packed values")
    k = struct.unpack_from("<I", data, 1)[0] if kind == F32_EXCEPT else 0
    planes = np.empty((4, n), dtype=np.uint8)
    _planes_into(data, n, 1 if kind == F32 else 5 + 12 * k, planes)
    out = planes.T.copy().view("<f4").reshape(n).astype(np.float64)
    if k:
        out[np.frombuffer(data, dtype="<u4", count=k, offset=5)] = np.frombuffer(data, dtype="<f8", count=k,
                                                                                 offset=5 + 4 * k)
    return out


def encode_row(values: np.ndarray, segments: Sequence[int]) -> bytes:
    """A group's values (in its order) as ``packed.data``: the end offset of each segment
    (uint32, after this header), then each segment :func:`encode`-d."""
    ends = np.cumsum(segments)
    parts = [encode(values[start:end]) for start, end in zip(np.concatenate([[0], ends[:-1]]), ends)]
    offsets = np.cumsum([len(p) for p in parts]).astype("<u4")
    return offsets.tobytes() + b"".join(parts)


def segment_bytes(data: bytes, n_segments: int, k: int) -> memoryview:
    """Segment ``k`` of one ``packed.data`` (of ``n_segments``), as :func:`encode` gave it."""
    header = 4 * n_segments
    start = header + (struct.unpack_from("<I", data, 4 * (k - 1))[0] if k else 0)
    return memoryview(data)[start : header + struct.unpack_from("<I", data, 4 * k)[0]]


def _segments_of(rows: Sequence[tuple], n_segments: int, k: int) -> list:
    """Segment ``k`` of the ``packed.data`` (third item) of each row, as :func:`segment_bytes`
    gives it, the offsets of all rows read at once."""
    if len(rows) < 64:
        return [segment_bytes(r[2], n_segments, k) for r in rows]
    header = 4 * n_segments
    ends = np.frombuffer(b"".join([r[2][:header] for r in rows]), dtype="<u4").reshape(len(rows), n_segments)
    starts = (ends[:, k - 1] if k else np.zeros(len(rows), np.uint32)).astype(np.int64) + header
    stops = ends[:, k].astype(np.int64) + header
    return [r[2][a:b] for r, a, b in zip(rows, starts.tolist(), stops.tolist())]


def decode_segment(data: bytes, segments: Sequence[int], k: int) -> np.ndarray:
    """The float64 values of segment ``k`` of one ``packed.data``."""
    return decode(segment_bytes(data, len(segments), k), int(segments[k]))


def decode_row(data: bytes, segments: Sequence[int]) -> np.ndarray:
    """All float64 values of one ``packed.data``, in its group's order."""
    return np.concatenate([decode_segment(data, segments, k) for k in range(len(segments))])


# -- writing ----------------------------------------------------------------------------
class PackedWriter:
    """Writes values in the packed layout through the writer thread's connection
    (the tables exist: :data:`PACKED_SCHEMA` is part of the store's schema)."""

    def __init__(self, conn: sqlite3.Connection, apart: Collection[str] = ()) -> None:
        """``apart``: levels whose series are a group of their own (the writer's: the
        model's and the metrics', read over every step)."""
        self._conn = conn
        self._apart = frozenset(apart)
        self._series: dict[int, tuple[str | None, str | None]] = {}  # id -> (level, stat)
        self._plans: dict[bytes, list[tuple[tuple, np.ndarray, list[int]]]] = {}  # ids of a write -> groups
        self._groups: dict[tuple[bytes, bytes], int] = {}  # (series, segments) -> group id
        for group, series, segments in conn.execute("SELECT id, series, segments FROM series_groups"):
            self._groups[(bytes(series), bytes(segments))] = int(group)  # a resumed run's groups are used again
        self._next_group = max(self._groups.values(), default=0) + 1

    def write(self, step: int, ids: np.ndarray, values: np.ndarray) -> None:
        """The values of series ``ids`` at ``step`` (a later write of a series at a step replaces it)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        values = np.asarray(values, dtype=np.float64)
        key = ids.tobytes()
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan(ids)
        # the groups' rows with every write: a transaction rolled back (and written again by
        # the writer) may have taken them away, and a packed row must never lack its group
        self._conn.executemany("INSERT OR IGNORE INTO series_groups(id, series, segments) VALUES (?,?,?)",
                               [group_row for group_row, _, _ in plan])
        self._conn.executemany(
            "INSERT OR REPLACE INTO packed(grp, step, data) VALUES (?,?,?)",
            [(group_row[0], step, encode_row(values[positions], segments)) for group_row, positions, segments in plan],
        )

    def _plan(self, ids: np.ndarray) -> list[tuple[tuple, np.ndarray, list[int]]]:
        """Groups of one write: ``(series_groups row, positions in the write, segment
        lengths)``; a series given twice keeps its last value."""
        unique, first_from_end = np.unique(ids[::-1], return_index=True)
        positions = len(ids) - 1 - first_from_end  # ascending ids, last occurrence of each
        self._learn(unique)
        keys = [self._series[int(i)] for i in unique]
        by_key: dict[tuple, list[int]] = {}
        for k, key in enumerate(keys):
            by_key.setdefault(key, []).append(k)
        apart = self._apart
        totals = sorted(k for key, v in by_key.items() if key[0] in apart for k in v)
        parts = [np.array(v) for key, v in by_key.items() if len(v) >= SEGMENT_MIN and key[0] not in apart]
        rest = sorted(k for key, v in by_key.items() if len(v) < SEGMENT_MIN and key[0] not in apart for k in v)
        if rest:
            parts.append(np.array(rest))
        groups: list[list[np.ndarray]] = []
        # the model's and the metrics' series (``apart``) in groups of their own: read over every
        # step (a run's totals), they must not bring a slice of the layers' values along
        for chosen in (parts, [np.array(totals)] if totals else []):
            groups.append([])
            for part in (p[i : i + GROUP_MAX] for p in chosen for i in range(0, len(p), GROUP_MAX)):
                if groups[-1] and sum(map(len, groups[-1])) + len(part) > GROUP_MAX:
                    groups.append([])
                groups[-1].append(part)
        groups = [g for g in groups if g]
        plan = []
        for segments in groups:
            order = np.concatenate(segments)
            lengths = [len(p) for p in segments]
            plan.append((self._group(unique[order], lengths), positions[order], lengths))
        return plan

    def _learn(self, ids: np.ndarray) -> None:
        """Look up the level and statistic of series not seen yet (None for unregistered ids)."""
        new = [int(i) for i in ids if int(i) not in self._series]
        for start in range(0, len(new), MAX_SQL_VARS):
            chunk = new[start : start + MAX_SQL_VARS]
            rows = self._conn.execute(
                f"SELECT id, level, stat FROM series WHERE id IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            found = {int(r[0]): (r[1], r[2]) for r in rows}
            for i in chunk:
                self._series[i] = found.get(i, (None, None))

    def _group(self, ids: np.ndarray, segments: list[int]) -> tuple[int, bytes, bytes]:
        """The ``series_groups`` row of a group (a new id for a group not seen yet)."""
        key = (np.ascontiguousarray(ids, dtype="<i8").tobytes(), np.array(segments, dtype="<i4").tobytes())
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = self._next_group
            self._next_group += 1
        return (group, *key)


# -- reading ----------------------------------------------------------------------------
def layout(tables: set[str]) -> str | None:
    """``'packed'`` or ``'rows'`` for a store with these tables (None: neither)."""
    if set(PACKED_TABLES) <= tables:
        return "packed"
    if set(ROW_TABLES) <= tables:
        return "rows"
    return None


def _in_list(column: str, values: Sequence[int] | None) -> tuple[str, list[int]]:
    """A ``column IN (...)`` condition and its arguments ('' when ``values`` is None or too long:
    the caller filters after reading)."""
    if values is None or len(values) > MAX_SQL_VARS:
        return "", []
    return f"{column} IN ({','.join('?' * len(values))})", [int(v) for v in values]


class Catalog:
    """Where a reader finds values: the store's layout and its series groups, read once per
    reader (and the groups read again when a wanted series is in none of those known, as
    when a live run has added a group since)."""

    def __init__(self, conn: sqlite3.Connection, tables: set[str] | None = None) -> None:
        self.conn = conn
        self._layout: str | None = None if tables is None else layout(tables)
        self._groups: list[tuple[int, np.ndarray, np.ndarray]] | None = None
        self._known = np.zeros(0, np.int64)

    def layout(self) -> str | None:
        if self._layout is None:
            self._layout = layout({r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")})
        return self._layout

    def groups(self, ids: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """``(group id, its series ids, its segment sizes)`` of every group."""
        if self._groups is None or not np.isin(ids, self._known).all():
            self._groups = [(int(g), np.frombuffer(blob, dtype="<i8"), np.frombuffer(seg, dtype="<i4"))
                            for g, blob, seg in self.conn.execute("SELECT id, series, segments FROM series_groups "
                                                                  "ORDER BY id")]
            self._known = np.sort(np.concatenate([ids for _, ids, _ in self._groups])) if self._groups else self._known
        return self._groups


def read_matrix(conn: sqlite3.Connection, ids: Sequence[int], steps: Sequence[int] | None = None, *,
                with_present: bool = False, catalog: Catalog | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The values of series ``ids`` (unique, in any order) at ``steps`` (None: all).

    Returns:
        ``(step_values, values, present)``: the steps at which any of the series has a
        value (ascending int64), float64 ``values[len(step_values), len(ids)]`` (columns
        in the order of ``ids``, NaN where nothing was written; Fortran order, one column
        per series), and with ``with_present`` a bool array of the same shape, True where
        a value was written (a written NaN too), else None.
    """
    ids = np.asarray(ids, dtype=np.int64)
    catalog = catalog or Catalog(conn)
    wanted_steps = None if steps is None else np.unique(np.asarray(list(steps), dtype=np.int64))
    if len(ids) == 0 or (wanted_steps is not None and len(wanted_steps) == 0):
        pieces = [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0)), np.zeros(0, np.int64))]
    elif catalog.layout() == "packed":
        pieces = _packed_pieces(conn, ids, wanted_steps, catalog.groups(ids))
    else:
        pieces = _row_pieces(conn, ids, wanted_steps)
    return _place(pieces, len(ids), with_present)


def read_long(conn: sqlite3.Connection, ids: Sequence[int], steps: Sequence[int] | None = None, *,
              catalog: Catalog | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(step, series, value)`` arrays of every value written of series ``ids`` (ascending,
    unique) at ``steps`` (None: all), ordered by step, then series id."""
    ids = np.asarray(ids, dtype=np.int64)
    step_values, values, present = read_matrix(conn, ids, steps, with_present=True, catalog=catalog)
    rows, cols = np.nonzero(present)  # row-major: by step, then column
    return step_values[rows], ids[cols], values[rows, cols]


def _columns(ids: np.ndarray, of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``of`` of the entries of ``ids`` found there, and the positions of those in ``ids``."""
    sorter = np.argsort(of, kind="stable")
    at = np.searchsorted(of, ids, sorter=sorter).clip(max=len(of) - 1)
    found = np.flatnonzero(of[sorter[at]] == ids)
    return found, sorter[at[found]]


#: A piece of values to place: ``(steps, columns, values[len(steps), len(columns)], write order)``
#: (rows of one piece have distinct steps; of two values at one place, the later write order wins).
Piece = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _place(pieces: list[Piece], n_columns: int, with_present: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    step_values = np.unique(np.concatenate([p[0] for p in pieces])) if pieces else np.zeros(0, np.int64)
    shape = (len(step_values), n_columns)
    matrix = np.full(shape, np.nan, order="F")
    present = np.zeros(shape, dtype=bool, order="F") if with_present else None
    columns_seen = np.bincount(np.concatenate([p[1] for p in pieces]), minlength=n_columns) if pieces else []
    written = np.full(shape, -1, dtype=np.int64, order="F") if (np.asarray(columns_seen) > 1).any() else None
    for steps, cols, values, order in pieces:
        rows = np.searchsorted(step_values, steps)
        if written is None and len(rows) == len(step_values) and len(cols) and cols[-1] - cols[0] == len(cols) - 1 \
                and (np.diff(cols) == 1).all():  # every step, adjacent columns: a block copy
            matrix[:, cols[0] : cols[-1] + 1] = values
            if present is not None:
                present[:, cols[0] : cols[-1] + 1] = True
            continue
        at = (rows[:, None], cols[None, :])
        if written is not None:  # a series in several pieces: the value written last wins
            newer = order[:, None] > written[at]
            values = np.where(newer, values, matrix[at])
            written[at] = np.maximum(written[at], order[:, None])
        matrix[at] = values
        if present is not None:
            present[at] = True
    return step_values, matrix, present


def _row_pieces(conn: sqlite3.Connection, ids: np.ndarray, steps: np.ndarray | None) -> list[Piece]:
    """The row-per-value layout (``scalars``, schema version 3 and before): one piece per series."""
    where, args = [], []
    for column, vals in (("series", ids.tolist()), ("step", None if steps is None else steps.tolist())):
        cond, a = _in_list(column, vals)
        if cond:
            where.append(cond)
            args += a
    sql = "SELECT step, series, value FROM scalars" + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY series, step"
    arr = np.array(conn.execute(sql, args).fetchall(), dtype=float).reshape(-1, 3)  # NULL (a NaN) -> nan
    step_col, series_col = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
    keep = np.isin(series_col, ids) & (np.isin(step_col, steps) if steps is not None else True)
    step_col, series_col, value_col = step_col[keep], series_col[keep], arr[keep, 2]
    pieces = []
    bounds = np.flatnonzero(np.diff(series_col)) + 1
    for part in np.split(np.arange(len(series_col)), bounds):
        if len(part):
            _, col = _columns(series_col[part[:1]], ids)
            pieces.append((step_col[part], col, value_col[part][:, None], np.zeros(len(part), np.int64)))
    return pieces


def _packed_pieces(conn: sqlite3.Connection, ids: np.ndarray, steps: np.ndarray | None,
                   groups: list[tuple[int, np.ndarray, np.ndarray]]) -> list[Piece]:
    """The packed layout: the rows of the groups holding any of ``ids``, decoded, one piece per group."""
    pieces = []
    if steps is not None and len(steps) > 1000 and steps[-1] - steps[0] < 16 * len(steps):
        cond, args = "step BETWEEN ? AND ?", [int(steps[0]), int(steps[-1])]  # a dense range: one index scan
    else:
        cond, args = _in_list("step", None if steps is None else steps.tolist())
    wanted = None if steps is None or cond.startswith("step IN") else set(steps.tolist())
    for group, group_ids, segments in groups:
        take, cols = _columns(group_ids, ids)
        if len(take) == 0:
            continue
        starts = np.concatenate([[0], np.cumsum(segments)[:-1]])
        segment_of = np.searchsorted(starts, take, side="right") - 1
        needed, needed_of = np.unique(segment_of, return_inverse=True)
        # positions of the wanted values within the needed segments, decoded one after another
        needed_starts = np.concatenate([[0], np.cumsum(segments[needed])[:-1]])
        pick = needed_starts[needed_of] + (take - starts[segment_of])
        rows = conn.execute(
            "SELECT rowid, step, data FROM packed WHERE grp = ?" + (f" AND {cond}" if cond else "") + " ORDER BY step",
            [group, *args],
        ).fetchall()
        if wanted is not None:
            rows = [r for r in rows if r[1] in wanted]
        if not rows:
            continue
        decoded = [decode_many(_segments_of(rows, len(segments), int(j)), int(segments[j])) for j in needed]
        values = decoded[0] if len(decoded) == 1 else np.concatenate(decoded, axis=1)
        if not (values.shape[1] == len(take) and np.array_equal(pick, np.arange(len(pick)))):
            values = values[:, pick]
        pieces.append((np.fromiter((r[1] for r in rows), np.int64, len(rows)), cols, values,
                       np.fromiter((r[0] for r in rows), np.int64, len(rows))))
    return pieces
