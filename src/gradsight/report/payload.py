"""What a report shows of one run, read from the store through the query layer.

All of a run's per-module statistics (every level with one row per module:
``layer``, and ``module``/``block`` from activation hooks) are read at one step
sample in a single query (:func:`gradsight.store.query.layer_matrices`), so a run
of 1,000 layers x 10,000 steps costs a few hundred thousand rows. The steps are
:func:`gradsight.store.query.step_sample` of the recorded steps, at most
``DEFAULT_MAX_STEPS`` as in the plots, the graph and the diagnosis, and fewer when
a run has so many modules and statistics that they would exceed ``CELL_BUDGET``
displayed values. Matrices travel as base64 little-endian float32, one row per
name. Model-level values and metrics are kept at up to ``MAX_LINE_POINTS`` steps
(the same sampler), and non-finite events are found over all steps.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradsight.diagnosis import diagnose
from gradsight.display import fmt_value, is_share, short_labels, summary_rows
from gradsight.plots.flow import OVERLAID_STEPS
from gradsight.store.query import (
    DEFAULT_MAX_STEPS,
    DEFAULT_ROLES,
    DEFAULT_STAT,
    family_and_depth,
    layer_matrices,
    layer_matrix,
    nonfinite_events,
    run_summary,
    step_sample,
    view_roles,
)
from gradsight.store.reader import Run
from gradsight.store.view import RunView, view_of
from gradsight.store.roles import Role
from gradsight.store.schema import Level

log = logging.getLogger(__name__)

#: Displayed cells (modules x steps x statistics) per run, at most: a run with many
#: modules and statistics is shown through fewer steps (but at least MIN_STEPS).
CELL_BUDGET = 1_200_000
MIN_STEPS = 40
#: Points per model-level or metric line, at most.
MAX_LINE_POINTS = 2000
#: Non-finite events listed, at most.
MAX_EVENTS = 2000


def encode_f32(values: np.ndarray) -> str:
    """Base64 of ``values`` as little-endian float32 (row-major)."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


@dataclass
class RunPayload:
    """One run, ready for the page: ``data`` goes into the JSON payload, the rest into HTML."""

    index: int
    run: RunView
    data: dict[str, Any]
    summary: list[tuple[str, str]]
    stat_options: list[tuple[str, str]]  # (key "level:stat", label)
    default_key: str | None
    family: str | None  #: None when the run's config records no family and depth
    depth: int | None
    notes: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)  #: the roles of the run's layers and modules, in Role.ALL order
    name: str = ""  #: the run's name in the report (distinct among the runs shown: store.query.run_labels)


def layout_key(view: RunView) -> int:
    """A fingerprint of what a run's charts are laid out by: its levels, each level's names in
    order and statistics (a live page is made again when a poll brings another)."""
    parts = []
    for lv in view.module_levels:
        parts += [lv, *view.names(lv), "", *view.stats(lv), ""]
    for lv in Level.TOTALS:
        parts += [lv, *view.stats(lv), ""]
    return zlib.crc32("\0".join(parts).encode("utf-8", "surrogatepass"))


def _encode_matrices(matrices: dict[tuple[str, str], pd.DataFrame]) -> dict[str, dict[str, Any]]:
    """``level:stat`` -> {level, stat, data[, share]}: ``data`` is the steps x names table
    transposed, one row per name (the page draws layers as rows); ``share`` marks a share of a
    whole (:func:`~gradsight.display.is_share`), drawn from 0 to 1 with 0 a value."""
    return {f"{level}:{stat}": {"level": level, "stat": stat, "data": encode_f32(m.to_numpy().T),
                                **({"share": True} if is_share(stat) else {})}
            for (level, stat), m in matrices.items()}


def _line(df: pd.DataFrame) -> dict[str, Any]:
    """Steps (ints) and values (base64 float32, so NaN and inf survive) of one line."""
    keep = step_sample(range(len(df)), MAX_LINE_POINTS)
    steps = df["step"].to_numpy()[keep]
    values = df["value"].to_numpy(dtype=float)[keep]
    return {"steps": [int(s) for s in steps], "values": encode_f32(values), "last": _last(values)}


def _last(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if len(finite) else None


def display_max_steps(per_step: int, *, cell_budget: int = CELL_BUDGET,
                      max_steps: int | None = DEFAULT_MAX_STEPS) -> int:
    """How many steps a report shows at most of a run with ``per_step`` displayed values
    per step: ``max_steps``, or for very wide runs as many as ``cell_budget`` allows
    (but at least ``MIN_STEPS``). The steps themselves are :func:`step_sample`'s."""
    cap = max(MIN_STEPS, cell_budget // max(1, per_step))
    return cap if max_steps is None else min(max_steps, cap)


def run_payload(run: RunView | Run, index: int, *, stat: str = DEFAULT_STAT, cell_budget: int = CELL_BUDGET,
                max_steps: int | None = DEFAULT_MAX_STEPS, base: Path | None = None,
                every_name: bool = False) -> RunPayload:
    """Read what the report shows of ``run`` (through its view, which the report's other
    readers share); its path is shown relative to ``base`` when inside it. With
    ``every_name`` a level's rows are every name recorded at it (``RunView.names``), also
    those without values at the shown steps: the rows a live page's later steps arrive in."""
    run = view_of(run)
    all_steps = run.steps
    levels = run.module_levels
    stats_by_level = {lv: run.stats(lv) for lv in levels}
    notes: list[str] = []

    # names per level, to size the step sample
    rows = {lv: max(1, len(run.names(lv))) for lv in levels}
    per_step = sum(rows[lv] * len(stats_by_level[lv]) for lv in levels)
    shown = display_max_steps(per_step, cell_budget=cell_budget, max_steps=max_steps)
    tables = layer_matrices(run, level=levels, max_steps=shown) if levels and all_steps else {}
    if every_name:
        tables = {(lv, st): t.reindex(columns=run.names(lv)) for (lv, st), t in tables.items()}
    steps = [int(s) for s in next(iter(tables.values())).index] if tables else step_sample(all_steps, shown)
    if len(steps) < len(all_steps):
        notes.append(f"Charts over steps show {len(steps)} of {len(all_steps):,} recorded steps, evenly spaced "
                     "(first and last included); non-finite gradients are found over all steps.")
    names = {}
    for (lv, _), m in tables.items():
        names.setdefault(lv, [str(n) for n in m.columns])
    matrices = _encode_matrices(tables)
    update_key = "layer:update_ratio" if "layer:update_ratio" in matrices else None
    if update_key is not None:
        # measured at every k-th recorded step (gs.watch(update_ratio=k)): its chart takes
        # its own sample of the steps that hold it, not the shared one of all recorded steps
        own = layer_matrix(run, "update_ratio", max_steps=shown)
        if [int(s) for s in own.index] != steps:
            own = own.reindex(columns=tables[("layer", "update_ratio")].columns)
            update_key = "update_ratio:own_steps"
            matrices[update_key] = {"level": "layer", "stat": "update_ratio", "steps": [int(s) for s in own.index],
                                    "data": encode_f32(own.to_numpy(dtype=float).T)}
    roles = {}
    for lv, level_names in names.items():
        of = run.roles(lv)
        roles[lv] = [of.get(n, "other") for n in level_names]
    default_roles = {lv: view_roles(run, DEFAULT_ROLES, lv) for lv in names}

    options = []
    for lv in levels:
        for st in stats_by_level[lv]:
            key = f"{lv}:{st}"
            if key in matrices:
                options.append((key, st if lv == "layer" else f"{st} ({lv})"))
    default_key = next((k for k in (f"layer:{stat}", "layer:grad_norm") if k in matrices),
                       options[0][0] if options else None)

    # whole-model line and non-finite events over all steps
    small = run.totals  # one read of the store for all of these
    model_rows = small[small["level"] == "model"]
    model_df = model_rows[model_rows["stat"] == stat]
    if model_df.empty:
        model_df = model_rows[model_rows["stat"] == "grad_norm"]
    model = {"stat": str(model_df["stat"].iloc[0]) if len(model_df) else stat, **_line(model_df),
             "sampled": len(model_df) > MAX_LINE_POINTS}
    events = nonfinite_events(run, level="layer", max_events=MAX_EVENTS)
    nonfinite = [[int(s), str(n), int(c)] for s, n, c in events.itertuples(index=False)]

    metrics = {}
    for name, g in small[small["level"] == "metric"].groupby("stat", sort=False):
        metrics[str(name)] = _line(g.sort_values("step"))

    family, depth = family_and_depth(run) or (None, None)
    summary = summary_rows(run_summary(run, stat, with_layers=False), base)
    for name, line in metrics.items():
        if line["last"] is not None:
            summary.append((f"{name} (last)", fmt_value(line["last"], 4) + f" at step {line['steps'][-1]}"))
    data = {
        "name": run.name,
        "steps": steps,
        "flow_columns": step_sample(range(len(steps)), OVERLAID_STEPS),  # positions in ``steps``
        "total_steps": len(all_steps),
        "names": names,
        # per level, each name as the axes show it (display.short_labels: the dotted prefix every
        # name shares dropped, whole trailing parts kept); hovering shows the full name
        "labels": {lv: short_labels(level_names) for lv, level_names in names.items()},
        "roles": roles,  # per level, the role of each name
        # per level, the roles shown first (None: all names)
        "default_roles": {lv: list(r) if r is not None else None for lv, r in default_roles.items()},
        "matrices": matrices,
        "default_key": default_key,
        "update_key": update_key,
        "model": model,
        "metrics": metrics,
        "nonfinite": nonfinite,
        "family": family,
        "depth": depth,
    }
    present = set(roles.get("layer", [])) | set(roles.get("module", []))  # what the role selector offers
    return RunPayload(index, run, data, summary, options, default_key, family, depth, notes,
                      [r for r in Role.ALL if r in present], name=run.name)


def results_table(runs: list[RunView] | list[Run]) -> list[tuple[Path, pd.DataFrame]]:
    """The ``results.csv`` tables (written by ``gradsight compare``) in the directory holding
    the runs or the one above it (``OUT/results.csv`` with ``OUT/runs/<run>``), once each."""
    seen, out = set(), []
    for run in runs:
        parent = run.path.resolve().parent
        path = next((d / "results.csv" for d in (parent, parent.parent) if (d / "results.csv").is_file()), None)
        if path is None or path in seen:
            continue
        seen.add(path)
        try:
            out.append((path, pd.read_csv(path)))
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            log.warning("could not read %s: %s", path, exc)
    return out


def diagnosis(run: RunView | Run | Path) -> list[tuple[str, str]]:
    """``(severity, message)`` findings of :func:`gradsight.diagnosis.diagnose`, worst first;
    one finding saying so when the diagnosis failed (the report is made all the same)."""
    try:
        findings = diagnose(run)
    except Exception as exc:  # a broken diagnosis must not cost the user the report
        log.warning("diagnosis of %s failed: %s", getattr(run, "path", run), exc)
        return [("error", f"the diagnosis failed: {type(exc).__name__}: {exc}")]
    return [(str(f.severity), f.message) for f in findings]


class DiagnosisJob:
    """:func:`diagnosis` of a run in a background thread, so that it overlaps with making
    the charts and can be given up on when a very large run takes too long. It reads
    through the run's view, which the charts share (the view serialises reads and keeps
    each table it read once)."""

    def __init__(self, run: RunView | Path) -> None:
        self.run = run
        self._result: list[tuple[str, str]] | None = None
        self._thread = threading.Thread(target=self._work, name="gradsight-report-diagnosis", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        self._result = diagnosis(self.run)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, deadline: float) -> tuple[bool, list[tuple[str, str]] | None]:
        """``(finished, findings)``, waiting until ``deadline`` (``time.monotonic()``) at most."""
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            return False, None
        return True, self._result
