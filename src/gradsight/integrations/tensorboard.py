"""TensorBoard: event files from a recorded run, or written live while training.

Scalars are tagged by level, statistic and name (:func:`scalar_tag`), e.g.
``layer/grad_norm/features.0``, ``model/update_ratio``, ``metric/loss``, so
TensorBoard shows one section per level and statistic with a curve per layer.
The store records statistics, not the gradient values themselves, so the
histograms are the *distribution across parameters* of each parameter-level
statistic at each step (``param_distribution/grad_norm``); they are written where
parameter-level values were recorded. Runs recorded with ``gs.watch(...,
histograms=...)`` also get the distribution of the gradient's values themselves: the
log2-magnitude histogram of each layer and of the model (``grad_log2_abs/<layer>``,
``grad_log2_abs/model``), whose x axis is ``log2 |g|`` with one bin per power of two
(exact counts; min, max, sum and sum of squares are those of the bins' lower edges).

Needs the ``tensorboard`` package: ``pip install "gradsight[tensorboard]"``.

Two ways::

    gradsight export runs/exp1 --format tensorboard -o tb/exp1     # after the fact

    from gradsight.integrations.tensorboard import live
    monitor = gs.watch(model, "runs/exp1", optimizer=optimizer)
    live(monitor, "tb/exp1")                                       # while training
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradsight.display import display_name
from gradsight.integrations._tap import Key, scalar_tag, select

#: Prefix of the histogram tags.
HISTOGRAM_PREFIX = "param_distribution"
#: Prefix of the log2-magnitude gradient histogram tags.
LOG2_PREFIX = "grad_log2_abs"

__all__ = ["LiveTensorBoard", "export_tensorboard", "live", "scalar_tag"]


def _summary_writer(log_dir: str | Path, **kwargs: Any):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError(
            "TensorBoard output needs the tensorboard package: pip install 'gradsight[tensorboard]'"
        ) from None
    return SummaryWriter(log_dir=str(log_dir), **kwargs)


class _EventSink:
    """Writes ``(step, keys, values)`` to a ``SummaryWriter``: scalars of the chosen
    levels and statistics, and a histogram per parameter-level statistic."""

    def __init__(
        self,
        writer: Any,
        levels: Sequence[str] | None,
        stats: Sequence[str] | None,
        histograms: bool,
    ) -> None:
        self.writer = writer
        self.levels = tuple(levels) if levels is not None else None
        self.stats = tuple(stats) if stats is not None else None
        self.histograms = histograms
        self.scalars_written = 0
        self.histograms_written = 0

    def _wanted_level(self, level: str) -> bool:
        if self.levels is None:
            return level != "param"
        return level in self.levels

    def write(self, step: int, keys: Sequence[Key], values: np.ndarray, walltime: float | None = None) -> None:
        by_stat: dict[str, list[float]] = {}
        for i in select(keys, None, self.stats):
            level, name, stat = keys[i]
            value = float(values[i])
            if self._wanted_level(level):
                self.writer.add_scalar(scalar_tag(level, name, stat), value, step, walltime=walltime)
                self.scalars_written += 1
            if self.histograms and level == "param":
                by_stat.setdefault(stat, []).append(value)
        for stat, vals in by_stat.items():
            arr = np.asarray(vals, dtype=np.float64)
            arr = arr[np.isfinite(arr)]
            if len(arr) > 1:
                self.writer.add_histogram(f"{HISTOGRAM_PREFIX}/{stat}", arr, step, walltime=walltime)
                self.histograms_written += 1

    def write_log2(self, step: int, keys: Sequence[tuple[str, str]], bucket_lo: int, dense: np.ndarray,
                   walltime: float | None = None) -> None:
        """Log2 histograms ``dense[i]`` (buckets ``bucket_lo, ...``) of ``keys[i] = (level, name)``."""
        if not self.histograms:
            return
        for (level, name), counts in zip(keys, dense):
            nz = np.flatnonzero(counts)
            if not len(nz):
                continue
            buckets = np.arange(nz[0], nz[-1] + 1) + bucket_lo
            c = np.asarray(counts[nz[0] : nz[-1] + 1], dtype=np.float64)
            tag = f"{LOG2_PREFIX}/model" if level == "model" else f"{LOG2_PREFIX}/{display_name(name)}"
            self.writer.add_histogram_raw(
                tag, min=float(buckets[0]), max=float(buckets[-1]), num=float(c.sum()),
                sum=float((c * buckets).sum()), sum_squares=float((c * buckets * buckets).sum()),
                bucket_limits=(buckets + 1).astype(np.float64).tolist(), bucket_counts=c.tolist(),
                global_step=step, walltime=walltime,
            )
            self.histograms_written += 1


def export_tensorboard(
    run: Any,
    log_dir: str | Path,
    *,
    levels: Sequence[str] | None = None,
    stats: Sequence[str] | None = None,
    histograms: bool = True,
) -> dict[str, int]:
    """Write a recorded run as TensorBoard event files into ``log_dir``.

    Args:
        run: a :class:`gradsight.Run` or the path of a run.
        log_dir: directory for the event files (created; a new file is added to it).
        levels: levels to write as scalars (default: every level but ``param``;
            name ``param`` to get one curve per parameter).
        stats: only these statistics (default: all); metrics (``loss``, your
            ``monitor.log`` values) are kept whatever ``stats`` says.
        histograms: also write the per-step distribution across parameters of each
            parameter-level statistic (when parameters were recorded), and the log2
            gradient histograms (when the run recorded them).

    Returns:
        ``{"scalars": n, "histograms": m, "steps": k}`` written.
    """
    from gradsight.store.reader import Run, open_run

    own = not isinstance(run, Run)
    r = open_run(run) if own else run
    try:
        frame = r.frame()
        times = _step_times(r)
        log2 = pd.concat([r.histograms(level="layer"), r.histograms(level="model")]) if histograms else None
    finally:
        if own:
            r.close()
    writer = _summary_writer(log_dir)
    sink = _EventSink(writer, levels, stats, histograms)
    steps = 0
    try:
        for step, group in frame.groupby("step", sort=True):
            keys = list(zip(group["level"], group["name"], group["stat"]))
            sink.write(int(step), keys, group["value"].to_numpy(dtype=np.float64), walltime=times.get(int(step)))
            steps += 1
        if log2 is not None and not log2.empty:
            lo = int(log2["log2_bucket"].min())
            width = int(log2["log2_bucket"].max()) - lo + 1
            for step, group in log2.groupby("step", sort=True):
                keys = list(dict.fromkeys(zip(group["level"], group["name"])))
                row = {k: i for i, k in enumerate(keys)}
                dense = np.zeros((len(keys), width), dtype=np.int64)
                idx = [row[k] for k in zip(group["level"], group["name"])]
                dense[idx, group["log2_bucket"].to_numpy() - lo] = group["count"].to_numpy()
                sink.write_log2(int(step), keys, lo, dense, walltime=times.get(int(step)))
    finally:
        writer.close()
    return {"scalars": sink.scalars_written, "histograms": sink.histograms_written, "steps": steps}


def _step_times(run: Any) -> dict[int, float]:
    """Wall time of each recorded gradient step (metrics logged elsewhere get none)."""
    try:
        df = run._query("SELECT step, time FROM steps")
    except Exception:  # an older or partial store: TensorBoard uses the export time
        return {}
    return {int(s): float(t) for s, t in zip(df["step"], df["time"])}


class LiveTensorBoard:
    """Writes what a monitor records to TensorBoard event files as it is recorded.

    Create with :func:`live`. The event file is closed with the monitor, or by
    :meth:`close`. Only the process that writes the store writes events.
    """

    def __init__(
        self,
        monitor: Any,
        log_dir: str | Path,
        *,
        levels: Sequence[str] | None = None,
        stats: Sequence[str] | None = None,
        histograms: bool = True,
        flush_secs: int = 10,
    ) -> None:
        self.log_dir = Path(log_dir)
        self._sink: _EventSink | None = None
        self._remove = lambda: None
        if monitor.writes_store:
            self._sink = _EventSink(_summary_writer(self.log_dir, flush_secs=flush_secs), levels, stats, histograms)
            self._remove = monitor.add_listener(self._sink.write, on_close=self.close,
                                                on_histograms=self._sink.write_log2)

    @property
    def scalars_written(self) -> int:
        return self._sink.scalars_written if self._sink is not None else 0

    def flush(self) -> None:
        if self._sink is not None:
            self._sink.writer.flush()

    def close(self) -> None:
        """Stop listening and close the event file; idempotent."""
        self._remove()
        if self._sink is not None:
            self._sink.writer.close()


def live(
    monitor: Any,
    log_dir: str | Path,
    *,
    levels: Sequence[str] | None = None,
    stats: Sequence[str] | None = None,
    histograms: bool = True,
    flush_secs: int = 10,
) -> LiveTensorBoard:
    """Also write everything ``monitor`` records to TensorBoard event files in ``log_dir``.

    Arguments as in :func:`export_tensorboard`; ``flush_secs`` is how often the event
    file is flushed to disk. Returns the :class:`LiveTensorBoard` (closed together
    with the monitor).
    """
    return LiveTensorBoard(monitor, log_dir, levels=levels, stats=stats, histograms=histograms, flush_secs=flush_secs)
