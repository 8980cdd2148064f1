"""What a report shows of one run, read from the store and downsampled for display.

All of a run's per-module statistics (every level with one row per module:
``layer``, and ``module``/``block`` from activation hooks) are read at one set of
evenly spaced steps in a single query, so a run of 1,000 layers x 10,000 steps
costs a few hundred thousand rows. The number of displayed steps is chosen so the
whole run stays under a cell budget; matrices travel as base64 little-endian
float32. Model-level values and metrics are kept at up to ``MAX_LINE_POINTS``
steps, and non-finite events are found over all steps.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradsight.plots.data import family_and_depth, module_levels, name_order, nonfinite_events, step_sample
from gradsight.plots.style import fmt_value
from gradsight.store.reader import Run

log = logging.getLogger(__name__)

#: Displayed cells (modules x steps x statistics) per run, at most.
CELL_BUDGET = 1_200_000
#: Displayed steps per run, at most (and at least MIN_STEPS when the budget allows less).
MAX_STEPS = 300
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
    run: Run
    data: dict[str, Any]
    summary: list[tuple[str, str]]
    stat_options: list[tuple[str, str]]  # (key "level:stat", label)
    default_key: str | None
    family: str
    depth: int
    notes: list[str] = field(default_factory=list)


def _time(t: Any) -> str:
    try:
        return datetime.fromtimestamp(float(t)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"


def _names_by_level(df: pd.DataFrame, layer_order: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for level, g in df.groupby("level", sort=False):
        out[str(level)] = name_order(g, layer_order)
    return out


def _matrices(df: pd.DataFrame, names: dict[str, list[str]], steps: list[int]) -> dict[str, dict[str, Any]]:
    """``level:stat`` -> {level, stat, data}: rows in ``names[level]`` order, columns ``steps``."""
    col = {s: i for i, s in enumerate(steps)}
    out: dict[str, dict[str, Any]] = {}
    for (level, stat), g in df.groupby(["level", "stat"], sort=False):
        rows = {n: i for i, n in enumerate(names[str(level)])}
        m = np.full((len(rows), len(steps)), np.nan, dtype=np.float32)
        r = g["name"].map(rows).to_numpy()
        c = g["step"].map(col).to_numpy()
        ok = ~(pd.isna(r) | pd.isna(c))
        m[r[ok].astype(int), c[ok].astype(int)] = g["value"].to_numpy(dtype=np.float32)[ok]
        out[f"{level}:{stat}"] = {"level": str(level), "stat": str(stat), "data": encode_f32(m)}
    return out


def _line(df: pd.DataFrame) -> dict[str, Any]:
    """Steps (ints) and values (base64 float32, so NaN and inf survive) of one line."""
    steps = df["step"].to_numpy()
    values = df["value"].to_numpy(dtype=float)
    if len(steps) > MAX_LINE_POINTS:
        idx = np.unique(np.linspace(0, len(steps) - 1, MAX_LINE_POINTS).round().astype(int))
        steps, values = steps[idx], values[idx]
    return {"steps": [int(s) for s in steps], "values": encode_f32(values), "last": _last(values)}


def _last(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if len(finite) else None


def run_payload(run: Run, index: int, *, stat: str = "grad_norm", cell_budget: int = CELL_BUDGET,
                max_steps: int = MAX_STEPS, base: Path | None = None) -> RunPayload:
    """Read what the report shows of ``run``; its path is shown relative to ``base`` when inside it."""
    all_steps = run.steps()
    levels = module_levels(run)
    stats_by_level = {lv: run.stats(lv) for lv in levels}
    n_layers = len(run.layers())
    notes: list[str] = []

    # rows per level, to size the step sample (layers are known; other levels from one step)
    rows = {}
    for lv in levels:
        if lv == "layer" and n_layers:
            rows[lv] = n_layers
        elif all_steps:
            rows[lv] = max(1, run.frame(level=lv, stat=stats_by_level[lv][:1], steps=all_steps[-1:])["name"].nunique())
        else:
            rows[lv] = 1
    per_step = sum(rows[lv] * len(stats_by_level[lv]) for lv in levels) or 1
    n_cols = int(min(max_steps, max(MIN_STEPS, cell_budget // per_step)))
    steps = step_sample(all_steps, n_cols)
    if levels and steps:
        df = run.frame(level=levels, steps=None if len(steps) == len(all_steps) else steps)
    else:
        df = pd.DataFrame(columns=["step", "level", "name", "layer", "depth", "stat", "value"])
    if len(steps) < len(all_steps):
        notes.append(f"Charts over steps show {len(steps)} of {len(all_steps):,} recorded steps, evenly spaced "
                     "(first and last included); non-finite gradients are found over all steps.")
    names = _names_by_level(df, list(run.layers()["name"])) if not df.empty else {}
    matrices = _matrices(df, names, steps) if not df.empty else {}

    options = []
    for lv in levels:
        for st in stats_by_level[lv]:
            key = f"{lv}:{st}"
            if key in matrices:
                options.append((key, st if lv == "layer" else f"{st} ({lv})"))
    default_key = f"layer:{stat}" if f"layer:{stat}" in matrices else (options[0][0] if options else None)

    # whole-model line and non-finite events over all steps
    small = run.frame(level=["model", "metric"])  # one pass over the store for all of these
    model_rows = small[small["level"] == "model"]
    model_df = model_rows[model_rows["stat"] == stat]
    if model_df.empty:
        model_df = model_rows[model_rows["stat"] == "grad_norm"]
    model = {"stat": str(model_df["stat"].iloc[0]) if len(model_df) else stat, **_line(model_df),
             "sampled": len(model_df) > MAX_LINE_POINTS}
    events = nonfinite_events(run, level="layer", max_events=MAX_EVENTS, model_frame=model_rows)
    nonfinite = [[int(s), str(n), int(c)] for s, n, c in events.itertuples(index=False)]

    metrics = {}
    for name, g in small[small["level"] == "metric"].groupby("stat", sort=False):
        metrics[str(name)] = _line(g.sort_values("step"))

    family, depth = family_and_depth(run)
    summary = _summary(run, all_steps, n_layers, metrics, base)
    data = {
        "name": run.name,
        "steps": [int(s) for s in steps],
        "total_steps": len(all_steps),
        "names": names,
        "matrices": matrices,
        "default_key": default_key,
        "update_key": "layer:update_ratio" if "layer:update_ratio" in matrices else None,
        "model": model,
        "metrics": metrics,
        "nonfinite": nonfinite,
        "family": family,
        "depth": depth,
    }
    return RunPayload(index, run, data, summary, options, default_key, family, depth, notes)


def display_path(path: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            pass
    return str(path)


def _summary(run: Run, steps: list[int], n_layers: int, metrics: dict[str, dict[str, Any]],
             base: Path | None = None) -> list[tuple[str, str]]:
    meta = run.meta
    rows: list[tuple[str, str]] = [("run", display_path(run.path, base)),
                                   ("model", str(meta.get("model_class", "?")))]
    status = str(meta.get("status", "?"))
    if meta.get("error"):
        status += f" ({meta['error']})"
    rows.append(("status", status))
    start, end = meta.get("start_time"), meta.get("end_time")
    when = f"{_time(start)} → {_time(end)}"
    try:
        when += f" ({float(end) - float(start):.1f} s)"
    except (TypeError, ValueError):
        pass
    rows.append(("time", when))
    try:
        rows.append(("parameters", f"{int(meta.get('num_params', 0)):,} ({int(meta.get('num_trainable', 0)):,} trainable)"))
    except (TypeError, ValueError):
        pass
    rows.append(("layers", f"{n_layers} (depth order from {meta.get('depth_source', '?')})"))
    rows.append(("steps recorded", f"{len(steps):,}" + (f" (steps {steps[0]}…{steps[-1]})" if steps else "")))
    for key in ("optimizer", "device", "amp", "torch_version", "schedule"):
        if meta.get(key) not in (None, ""):
            rows.append((key.replace("_", " "), str(meta[key])))
    if run.config:
        rows.append(("config", ", ".join(f"{k}={v}" for k, v in run.config.items())))
    for name, line in metrics.items():
        if line["last"] is not None:
            rows.append((f"{name} (last)", fmt_value(line["last"], 4) + f" at step {line['steps'][-1]}"))
    return rows


def results_table(runs: list[Run]) -> list[tuple[Path, pd.DataFrame]]:
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


def diagnosis(run: Run | Path) -> list[tuple[str, str]] | None:
    """``(severity, message)`` findings from ``gradsight.diagnose.diagnose(run)``, if that exists.

    Returns None when the diagnosis module is not available; a finding saying so
    when it failed.
    """
    try:
        from gradsight.diagnose import diagnose  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        return None
    try:
        findings = diagnose(run)
    except Exception as exc:  # a broken diagnosis must not cost the user the report
        log.warning("diagnosis of %s failed: %s", getattr(run, "path", run), exc)
        return [("error", f"the diagnosis failed: {type(exc).__name__}: {exc}")]
    out = []
    for f in findings or []:
        sev = getattr(f, "severity", "info")
        sev = getattr(sev, "name", None) or getattr(sev, "value", None) or sev
        out.append((str(sev).lower(), str(getattr(f, "message", f))))
    return out


class DiagnosisJob:
    """:func:`diagnosis` of a run directory in a background thread (with its own store
    connection), so it overlaps with reading the charts' data and can be given up on
    when a very large run takes too long."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._result: list[tuple[str, str]] | None = None
        self._thread = threading.Thread(target=self._work, name="gradsight-report-diagnosis", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        self._result = diagnosis(self.run_dir)

    def result(self, deadline: float) -> tuple[bool, list[tuple[str, str]] | None]:
        """``(finished, findings)``, waiting until ``deadline`` (``time.monotonic()``) at most."""
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            return False, None
        return True, self._result
