"""Schema of the run store (``<run_dir>/gradsight.sqlite``).

See ``docs/design.md`` for the meaning of every table and column.
"""

from __future__ import annotations

from gradsight.store.histograms import DDL as HISTOGRAMS_SCHEMA
from gradsight.store.packed import PACKED_SCHEMA

DB_NAME = "gradsight.sqlite"


class Level:
    """The levels of the ``series`` table: what one series' ``name`` names."""

    PARAM = "param"    # a parameter, as named_parameters() names it
    LAYER = "layer"    # a module owning parameters (or a parameter owned by a container)
    MODEL = "model"    # the whole model (name '')
    METRIC = "metric"  # the loss and values given to monitor.log() (name = the metric)
    MODULE = "module"  # a module's output activation and output gradient
    BLOCK = "block"    # a residual addition: skip and branch statistics

    ALL = (PARAM, LAYER, MODEL, METRIC, MODULE, BLOCK)
    #: Levels with one row per module, ``layer`` first.
    PER_MODULE = (LAYER, MODULE, BLOCK)
    #: Levels without per-module rows.
    TOTALS = (MODEL, METRIC)


class RowKind:
    """What a ``layers`` row is (its ``kind`` column; one name may have rows of several
    kinds). Not a :class:`Level`, though three of the names are shared."""

    LAYER = "layer"
    BLOCK = "block"
    MODULE = "module"


#: 2: ``layers`` is keyed on ``(name, kind)`` (version 1: on ``name``), so a residual
#: block that owns parameters has a ``layer`` row and a ``block`` row.
#: 3: ``layers`` has ``role`` and ``tied`` (:mod:`gradsight.store.roles`); readers derive
#: them for older stores from the same rows.
#: 4: values are packed arrays (``series_groups``, ``packed``: :mod:`gradsight.store.packed`)
#: instead of one ``scalars`` row per value; readers read both.
SCHEMA_VERSION = 4

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL              -- JSON
);
CREATE TABLE IF NOT EXISTS params (
    name      TEXT PRIMARY KEY,      -- as model.named_parameters() gives it
    layer     TEXT NOT NULL,         -- owning module ('' = root), the parameter's own name when a container owns it,
                                     -- or a recurrent module's stacked layer (rnn.l0, rnn.l0_reverse)
    shape     TEXT NOT NULL,         -- JSON list
    numel     INTEGER NOT NULL,
    dtype     TEXT NOT NULL,
    trainable INTEGER NOT NULL,      -- 0 for frozen (requires_grad=False): not recorded
    aliases   TEXT NOT NULL,         -- JSON list of other names of a tied parameter
    position  INTEGER NOT NULL       -- index in named_parameters() order
);
CREATE TABLE IF NOT EXISTS layers (
    name        TEXT NOT NULL,       -- qualified module name ('' = root), parameter name, or stacked layer (rnn.l0)
    depth       INTEGER,             -- forward-execution order among rows of one kind, 0 = first
    module_type TEXT NOT NULL,
    kind        TEXT NOT NULL,       -- 'layer' (owns parameters), 'block', 'module'
    role        TEXT,                -- 'embedding', 'norm', 'weighted', 'head', 'scalar', 'other' (NULL: derive)
    tied        INTEGER,             -- 1: a parameter of the layer has other names (aliases)
    PRIMARY KEY (name, kind)
);
CREATE TABLE IF NOT EXISTS series (
    id    INTEGER PRIMARY KEY,
    level TEXT NOT NULL,             -- 'param' | 'layer' | 'model' | 'metric' | ...
    name  TEXT NOT NULL,
    stat  TEXT NOT NULL,
    UNIQUE (level, name, stat)
);
CREATE TABLE IF NOT EXISTS steps (
    step INTEGER PRIMARY KEY,
    time REAL NOT NULL               -- unix time when the step was recorded
);
""" + PACKED_SCHEMA + HISTOGRAMS_SCHEMA

#: Schema versions :func:`gradsight.open_run` reads; it refuses others with both versions named.
READABLE_VERSIONS = frozenset(range(1, SCHEMA_VERSION + 1))


def __getattr__(name: str):
    if name == "Kind":  # its name until row kinds and series levels were told apart
        import warnings

        warnings.warn("gradsight.store.schema.Kind is deprecated; use RowKind", DeprecationWarning, stacklevel=2)
        return RowKind
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
