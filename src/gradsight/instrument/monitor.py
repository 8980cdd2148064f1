"""The gradient monitor: ``gs.watch(model, ...)`` and ``monitor.step()``.

Data flow of one recorded step (see docs/design.md):

1. ``monitor.step()`` collects the ``.grad`` of each parameter that requires a
   gradient now (tensors are only referenced, never copied); one frozen at watch
   joins the run at its first gradient.
2. :func:`gradsight.stats.grad.raw_sums` reduces every gradient and weight to
   nine raw sums in one fused pass (or a few multi-tensor passes).
3. The raw sums and everything else for the step (plus the update ratios of the
   previous optimizer step) cross to the host in a single transfer.
4. There they are combined per layer and for the whole model, and the statistics
   derived, in float64 (:meth:`StepRows.stack_host`, :func:`~gradsight.stats.grad.stats_rows`).
5. The values, with precomputed series ids, go on the writer's queue; the
   writer thread inserts them and commits every second.

The monitor holds the parts together; each has its own module: ``layers``
(inventory, forward order), ``layer_table``, ``series``, ``meta``, ``transfer``,
``scaler``, ``update_ratio``, ``listeners``, ``distributed`` and ``activations``.
"""

from __future__ import annotations

import atexit
import inspect
import sys
import time
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gradsight._text import few
from gradsight.display import card_html
from gradsight.instrument.activations import ActivationRecorder
from gradsight.instrument.distributed import resolve as resolve_distributed
from gradsight.instrument.histograms import HistogramRecorder
from gradsight.instrument.hooks import HookRegistry
from gradsight.instrument.layer_table import LayerTable
from gradsight.instrument.layers import ForwardOrder, Inventory
from gradsight.instrument.listeners import HistogramListener, Listener, Listeners
from gradsight.instrument.meta import EVAL_MODE_STAT, default_run_dir, param_rows, run_meta, sizes
from gradsight.instrument.noise_scale import NoiseScale, warn_sharded
from gradsight.instrument.optimizer_state import AdamState
from gradsight.instrument.options import WatchOptions, with_options
from gradsight.instrument.options import resolve as resolve_options
from gradsight.instrument.recurrent import GateNorms, ThroughTime
from gradsight.instrument import resume as resuming
from gradsight.instrument.rows import LevelIds, StepRows
from gradsight.instrument.scaler import LossScale
from gradsight.instrument.series import SeriesIds
from gradsight.instrument.transfer import to_host
from gradsight.instrument.update_ratio import UpdateRatio
from gradsight.instrument.zeroing import KEY as ZEROING_KEY
from gradsight.instrument.zeroing import ZeroingCheck
from gradsight.stats.grad import (
    DEAD_ROWS_STAT,
    GRAD_STATS,
    MAXABS,
    NONFINITE,
    SUMSQ,
    W_SUMSQ,
    squares_lost,
    stats_rows,
)
from gradsight.store.schema import DB_NAME, Level

_OPEN_MONITORS: weakref.WeakSet = weakref.WeakSet()
_NONFINITE = GRAD_STATS.index("grad_nonfinite")
_DEAD_ROWS = len(GRAD_STATS)  #: the column after GRAD_STATS in a step's statistics


def end_status(exc: BaseException | None) -> tuple[str, str | None]:
    """The status (and ``meta.error``) of a run that ``exc`` ended: ``interrupted`` for
    Ctrl-C (``KeyboardInterrupt``) or no exception at all (the process ended without
    ``close()``), ``failed`` for any other exception."""
    if exc is None:
        return "interrupted", "the process ended without Monitor.close()"
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    return status, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@atexit.register
def _close_open_monitors() -> None:
    """At exit, a monitor its user never closed did not end on the normal path: the
    uncaught exception that ended the process (``sys.last_value``) decides its status."""
    status, error = end_status(getattr(sys, "last_value", None))
    for mon in list(_OPEN_MONITORS):
        try:
            mon.close(status=status, error=error)
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


class _NewPaths:
    """What a run's construction may create under ``run_dir``, noted before it starts, so that a
    failed construction can delete it: the store's files and the directories that did not exist."""

    def __init__(self, run_dir: Path, resume: bool) -> None:
        self.store = run_dir / DB_NAME
        self.keep_store = resume and self.store.exists()  # a run to resume: never deleted
        self.dirs = []  # missing directories, deepest first
        d = run_dir
        while not d.exists() and d != d.parent:
            self.dirs.append(d)
            d = d.parent

    def remove(self) -> None:
        if self.keep_store:
            return
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(self.store) + suffix).unlink(missing_ok=True)
        for d in self.dirs:
            try:
                d.rmdir()
            except OSError:  # not empty (someone else's files) or already gone
                break


class Monitor:
    """Records gradient statistics of a model at chosen calls of :meth:`step`.

    Create with :func:`gradsight.watch`, which documents every argument. Usable as
    a context manager; leaving the block (also through an exception) calls
    :meth:`close`.
    """

    def __init__(self, model: nn.Module, run_dir: str | Path | None = None, **options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"gs.watch expects a torch.nn.Module, got {type(model).__name__}")
        self.options = resolve_options(options)  #: the resolved keyword arguments (:class:`WatchOptions`)
        self.model = model
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir(model)
        self.step_count = 0  #: number of step() calls so far (by this monitor)
        self.recorded_steps = 0  #: steps recorded so far (by this monitor)
        self.resumption = resuming.NEW_RUN  #: where a resumed run goes on (``resume=``)
        self._closed = False
        self._hooks = HookRegistry()
        self._writer = None
        self._warned_new_params = False
        self._warned_no_gradient = False
        self._warned_same_gradient = False
        self._sentinels: list[Tensor] = []  # a few parameters with a gradient at the last recorded step
        self._sentinel_grads: list[tuple[weakref.ref, int] | None] = []  # their .grad at the last step() call
        self._known_params: set[int] | None = None  # ids of the parameters seen at watch()
        self._created = _NewPaths(self.run_dir, self.options.resume is not False)
        try:
            self._build(model, self.options)
        except BaseException:
            self._undo_build()
            raise
        _OPEN_MONITORS.add(self)

    def _build(self, model: nn.Module, opts: WatchOptions) -> None:
        """Everything that registers hooks or creates files (undone by :meth:`_undo_build` on failure)."""
        self.inventory = inv = Inventory.of(model)
        if not inv.watched:
            warnings.warn(f"{type(model).__name__} has no trainable parameters: gs.watch records no gradient "
                          "statistics (frozen parameters are listed only)", stacklevel=4)
        # every parameter has a row index: one frozen at watch joins the run when it has a gradient (_join)
        self._params = [pi.param for pi in inv.params]
        self._param_names = param_names = [pi.name for pi in inv.params]
        self._layer_names = layer_names = inv.all_layers()
        layer_index = {ln: i for i, ln in enumerate(layer_names)}
        self._param_layer = np.array([layer_index[pi.layer] for pi in inv.params], dtype=np.int64)
        self._in_run = [pi.trainable for pi in inv.params]  #: recorded: trainable at watch, or joined since
        self._outside = self._in_run.count(False)  #: frozen at watch and not joined (yet)
        self._unfrozen: dict[str, int] = {}  #: joined parameters and the step they joined at
        watched = [i for i, recorded in enumerate(self._in_run) if recorded]
        watched_layers = [layer_index[ln] for ln in inv.layers]

        # one process (Local) or torch.distributed (only rank 0 writes the store)
        self._dist = resolve_distributed(opts.distributed, model)
        self._writer = self._dist.writer(self.run_dir, opts.overwrite, opts.resume is not False)
        earlier = self._writer.earlier
        if opts.resume is not False:
            if earlier is not None:
                resuming.check_model(earlier, param_names, self.run_dir)
            # only rank 0 reads the store: every rank goes on where it does
            self.resumption = self._dist.agree(resuming.plan(earlier, opts.resume))
        self._series = SeriesIds(self._writer, earlier.series if earlier is not None else ())
        self._listeners = Listeners()
        self._stat_cols = [k for k, st in enumerate(GRAD_STATS)
                           if opts.weights or st not in ("weight_norm", "grad_weight_ratio")]
        self._stat_ids = LevelIds.register(self._series, param_names, layer_names,
                                           [GRAD_STATS[k] for k in self._stat_cols], watched, watched_layers)
        self._dead_ids = LevelIds(np.full((len(param_names), 1), -1, dtype=np.int64),
                                  np.full((len(layer_names), 1), -1, dtype=np.int64), np.array([[-1]], dtype=np.int64))
        self._add_dead_rows_ids(watched)
        self._last_rows: tuple[tuple, tuple[StepRows, np.ndarray, np.ndarray]] | None = None
        self._histograms: HistogramRecorder | None = None
        if opts.histograms_every:
            self._histograms = HistogramRecorder(opts.histograms_every, param_names, layer_names, self._series,
                                                 self._dist.log2_counts, watched, watched_layers)
        self._series.flush()

        meta = run_meta(model, inv, opts, name=opts.name or self.run_dir.name)
        if earlier is not None:
            self._writer.continue_from(self.resumption.cut)
            meta = resuming.meta(earlier, meta, self.resumption, opts.name is not None, opts.config is not None)
            if self.resumption.removed:
                warnings.warn(resuming.describe(self.resumption, earlier, self.run_dir), stacklevel=4)
        self._writer.set_meta(**meta)
        self._writer.write_params(param_rows(inv))
        self._param_layout = [(p.shape, p.dtype) for p in self._params]  # as the params table has them
        self._order = ForwardOrder(model, self._hooks, inv.layer_params())  # frozen layers too: they may join
        self.activations: ActivationRecorder | None = None
        if opts.activations:
            self.activations = ActivationRecorder(
                model, opts.activations, opts.residual_blocks, self._hooks,
                is_active=lambda: not self._closed and self.should_record(),
            )
        self._gates = GateNorms(model, [(pi.name, pi.layer) for pi in inv.params])
        self._through_time: ThroughTime | None = None
        if opts.through_time:
            self._through_time = ThroughTime(model, self._hooks,
                                             is_active=lambda: not self._closed and self.should_record())
        self._layer_table = LayerTable(inv, self._order, self.activations, self._writer)
        self._noise: NoiseScale | None = None
        if opts.noise_scale and self._dist.mode == "sharded":
            warn_sharded()
        elif opts.noise_scale:
            self._noise = NoiseScale(self._params, self._param_layer, layer_names, self._hooks, self._dist.all_sum,
                                     self._dist.mode != "local", opts.micro_batch_size,
                                     is_active=lambda: not self._closed and self.should_record())
        self._loss_scale = LossScale(opts.scaler, opts.optimizers)
        self._updates = UpdateRatio(self._params, param_names, layer_names, self._series, self._dist.sumsq,
                                    opts.weights, opts.update_ratio_every, opts.optimizers, self._param_layer,
                                    whole=opts.update_ratio_whole)
        for optimizer in opts.optimizers if self._updates.every else ():
            self._hooks.attach(optimizer, "register_step_post_hook", self._updates.measure, "optimizer")
        self._adam = AdamState(self._params, param_names, layer_names, self._series, self._dist.sum_rows,
                               opts.optimizers if self._updates.every else ())
        # (a shard of a gradient cannot tell a cleared one: sharded mode is not checked)
        self._zeroing = ZeroingCheck(self._hooks, opts.optimizers) if self._dist.mode != "sharded" else None
        for optimizer in self._adam.optimizers:
            self._hooks.attach(optimizer, "register_step_post_hook", self._adam.measure, "optimizer")
        self._writer.flush()  # metadata on disk at once: a reader sees status 'running', not 'unknown'

    def _undo_build(self) -> None:
        """After a failed construction: remove the hooks, stop the writer and delete what it created."""
        self._closed = True
        self._hooks.remove_all()
        if self._writer is not None:
            try:
                if self._writer.earlier is not None:  # a resumed run is left as it was
                    self._writer.close(discard=True)
                else:
                    self._writer.close(status="failed")
            finally:
                if self._dist.writes_store:  # (another rank's store is not this process's to delete)
                    self._created.remove()

    def _add_dead_rows_ids(self, params: list[int]) -> None:
        """Register the series of ``grad_dead_rows`` of these parameters and of their layers where
        it applies (a tensor of >= 2 dims: it has rows); it stays -1 elsewhere and for the model."""
        with_rows = [i for i in params if self._params[i].dim() >= 2]
        for i in with_rows:
            self._dead_ids.param[i, 0] = self._series.id(Level.PARAM, self._param_names[i], DEAD_ROWS_STAT)
        for k in dict.fromkeys(int(self._param_layer[i]) for i in with_rows):
            if self._dead_ids.layer[k, 0] < 0:
                self._dead_ids.layer[k, 0] = self._series.id(Level.LAYER, self._layer_names[k], DEAD_ROWS_STAT)

    # -- writing and listening --------------------------------------------------------
    def _emit(self, step: int, ids: np.ndarray, values: np.ndarray, time_s: float | None = None) -> None:
        """Queue values for the store and hand them to the listeners."""
        self._writer.write_scalars(step, ids, values, time_s)
        if self._listeners and self.writes_store:
            self._listeners.values(int(step), self._series.keys(ids), np.asarray(values, dtype=np.float64))

    def add_listener(self, listener: Listener, on_close: Callable[[], None] | None = None,
                     on_histograms: HistogramListener | None = None) -> Callable[[], None]:
        """Call ``listener(step, keys, values)`` for everything recorded from now on.

        ``keys[i] = (level, name, stat)`` names ``values[i]`` (a float64 array). It is
        called on the training thread right after the values are queued for the
        store, only in the process that writes the store (rank 0 under
        ``torch.distributed``); an exception in it is logged once and never reaches
        the training loop. ``on_close()`` is called once after the store is closed.
        ``on_histograms(step, keys, bucket_lo, dense)`` receives the log2 histograms
        (``histograms=``): ``keys[i] = (level, name)``, ``dense[i]`` the int64 counts of
        buckets ``bucket_lo, bucket_lo + 1, ...``.

        Returns:
            A function that removes the listener (and ``on_close``, ``on_histograms``).
        """
        return self._listeners.add(listener, on_close, on_histograms)

    @property
    def writes_store(self) -> bool:
        """Whether this process writes the store (False on ranks other than 0)."""
        return self._dist.writes_store

    # -- recording --------------------------------------------------------------------
    def should_record(self, step: int | None = None) -> bool:
        """Whether the given (default: next) call of :meth:`step` is recorded (the calls of a
        resumed run are counted from the step it goes on at)."""
        return bool(self.options.schedule(self.resumption.start + self.step_count if step is None else step))

    def step(self, loss: Tensor | float | None = None, *, step: int | None = None) -> bool:
        """Record the gradients as they are now, if this call is scheduled.

        Call after ``loss.backward()`` (and any gradient accumulation) and before
        ``optimizer.step()``.

        Args:
            loss: optionally the loss, recorded as the metric ``loss`` exactly as
                passed (a tensor as its float32 value). With gradient accumulation pass
                the loss of the step, the sum of the micro-batch losses that were
                backpropagated (``total += loss.detach()`` after each ``loss.backward()``),
                not the last micro-batch's.
            step: the step index to record under (default: the number of earlier
                calls, starting at 0; for a resumed run, at the step it goes on at).
                A resumed run refuses a step before that one (``ValueError``).

        Returns:
            True when this call recorded gradient statistics (scheduled, and some
            watched parameter had a gradient).
        """
        if self._closed:
            raise RuntimeError("this monitor is closed")
        index = self.resumption.start + self.step_count if step is None else int(step)
        if not -2**63 <= index < 2**63:
            raise ValueError(f"step={index} does not fit the store's 64-bit step column; pass a smaller step")
        self._check_floor(index)
        if self._sentinels:
            self._check_same_gradients()
        record = self.should_record()
        self.step_count += 1
        if record:
            n = self.recorded_steps
            if n & (n - 1) == 0:  # recorded steps 0, 1, 2, 4, 8, ...: the walks cost ~0.6 ms on a 56-layer net
                if not self._warned_new_params:
                    self._warn_new_params()
                self._sync_params()
            record = self._record(index, loss)
        if self._noise is not None:
            self._noise.reset()
        if self._zeroing is not None:
            self._zeroing.arm()
        return record

    def _check_floor(self, step: int) -> None:
        """Refuse a step before the one a resumed run goes on at (it would write a recorded step again)."""
        floor = self.resumption.floor
        if floor is not None and step < floor:
            raise resuming.refuse_step(step, self.resumption, self.options.resume, self.run_dir)

    def _forget_gradients(self) -> None:
        """The next ``step()`` may see this call's gradients again without warning (an
        integration recording each of several optimizers' steps after one backward pass)."""
        self._sentinel_grads = [None] * len(self._sentinels)

    def _check_same_gradients(self) -> None:
        """Warn once when the gradients are the very tensors of the previous ``step()`` call, unchanged
        (no backward pass in between). Looks at a few parameters that had a gradient at the last
        recorded step: their ``.grad``'s identity (a weak reference) and version counter (a backward
        pass makes a new tensor or adds into it in place); about 1 us per call."""
        same, any_grad = True, False
        state: list[tuple[weakref.ref, int] | None] = []
        for p, before in zip(self._sentinels, self._sentinel_grads):
            g = p.grad
            if g is None:
                same = same and before is None
                state.append(None)
            elif before is not None and before[0]() is g:
                any_grad = True
                version = g._version
                same = same and before[1] == version
                state.append(before if before[1] == version else (before[0], version))
            else:
                same = False
                state.append((weakref.ref(g), g._version))
        self._sentinel_grads = state
        if not (same and any_grad) or self._warned_same_gradient:
            return
        self._warned_same_gradient = True
        warnings.warn("gradsight: monitor.step() was called again without a backward pass in between: the gradients "
                      "are the same tensors, unchanged since the previous step() call, and each call records them "
                      "as a step of its own; call monitor.step() once per optimizer step", stacklevel=3)

    def _sync_params(self) -> None:
        """Rewrite the ``params`` rows (and ``num_params``, ``num_trainable``) of parameters whose
        shape or dtype changed since they were written: a resized token embedding, ``model.half()``."""
        layout = [(p.shape, p.dtype) for p in self._params]
        changed = [pi for pi, now, then in zip(self.inventory.params, layout, self._param_layout) if now != then]
        if changed:
            self._param_layout = layout
            self._writer.write_params(param_rows(self.inventory, changed))
            self._writer.set_meta(**sizes(self.inventory))

    def _warn_new_params(self) -> None:
        """Warn once, naming them, about trainable parameters added to the model after ``watch()``
        (checked at the 1st, 2nd, 3rd, 5th, 9th, ... recorded step)."""
        if self._known_params is None:
            self._known_params = {id(pi.param) for pi in self.inventory.params}
        new = [n for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in self._known_params]
        if new:
            self._warned_new_params = True
            shown = few(new, 5)
            warnings.warn(f"{len(new)} trainable parameter(s) were added to the model after gs.watch() and are "
                          f"not recorded: {shown}; call gs.watch() after the model is complete", stacklevel=3)

    @torch.no_grad()
    def _record(self, step: int, loss: Tensor | float | None) -> bool:
        """Record this step's gradients; False (nothing recorded of them) when no parameter has one."""
        self._updates.forget()  # an optimizer step not seen since the last record
        recorded_index = self.recorded_steps  # 0 at the first recorded step
        params, in_run = self._params, self._in_run
        # a frozen parameter is not recorded: its .grad, if any, is left over from before it was frozen
        present, missing = [], []  # (missing: recorded, requiring a gradient, and without one)
        for i, p in enumerate(params):
            if p.requires_grad:
                if p.grad is not None:
                    present.append(i)
                elif in_run[i]:
                    missing.append(i)
        eval_mode = not self.model.training  # (model.eval() left on after an evaluation)
        if self._outside:
            joining = [i for i in present if not in_run[i]]
            if joining:
                self._join(step, joining)
        self._layer_table.sync()
        if not present:
            self._no_gradient(step, loss)
            return False
        self._sentinels = [params[i] for i in dict.fromkeys((present[0], present[len(present) // 2], present[-1]))]
        self._sentinel_grads = [(weakref.ref(p.grad), p.grad._version) for p in self._sentinels]
        grads = [params[i].grad for i in present]
        opts = self.options
        raw = self._dist.raw_sums(grads, [params[i] for i in present], opts.backend, opts.weights)
        device = raw.device
        rows, stat_ids, dead_rows = self._rows_of(present, device)
        inv_scale, scale = self._loss_scale.factors(device)
        act_keys, act_values = self.activations.collect(inv_scale) if self.activations is not None else ([], [])
        extra_keys = list(act_keys)
        extra_values = [torch.stack([v.float().to(device) for v in act_values])] if act_keys else []
        if self._gates:
            extra = self._gates.measure([p.grad if in_run[i] and p.requires_grad else None
                                         for i, p in enumerate(params)], inv_scale)
            extra_keys += extra[0]
            extra_values.append(extra[1])
        if self._through_time is not None:
            extra = self._through_time.collect(inv_scale)
            extra_keys += extra[0]
            extra_values.append(extra[1])
        if self._noise is not None:
            extra = self._noise.measure(rows, raw[:, SUMSQ], inv_scale, scale)
            extra_keys += extra[0]
            extra_values.append(extra[1])
        if self._zeroing is not None:
            if not self._zeroing.hooked:  # (the list of parameters only until one is hooked)
                self._zeroing.choose([params[i] for i in present])
            extra = self._zeroing.collect()
            extra_keys += extra[0]
            extra_values.append(extra[1])
        pending = self._updates.take_pending() + self._adam.take_pending()
        extra_values = [v for v in extra_values if v is not None]
        raw_h, scale_h, loss_h, *rest = to_host(
            [
                raw,
                scale,
                loss.detach().float().to(device) if isinstance(loss, Tensor) else None,
                *(v.to(device) for v in extra_values),
                *(values.to(device) for _, _, values in pending),
            ]
        )
        act_h = np.concatenate(rest[:len(extra_values)]) if extra_keys else None
        pending_h = rest[len(extra_values):]
        for (pstep, ids, _), values in zip(pending, pending_h):
            self._emit(pstep, ids, values)
        if self._zeroing is not None and ZEROING_KEY in extra_keys:
            self._zeroing.after(float(act_h[extra_keys.index(ZEROING_KEY)]), step)

        # the statistics are derived on the host, in float64, from the transferred raw sums
        raw_h = raw_h.reshape(raw.shape).astype(np.float64)
        sumsq_h = raw_h[:, SUMSQ]
        if not (sumsq_h.all() and np.isfinite(sumsq_h).all()):  # a zero or non-finite sum of squares (rare)
            lost = squares_lost(sumsq_h, raw_h[:, MAXABS])
            if len(lost):  # float32 squares underflowed or overflowed: those tensors squared in float64
                raw_h[lost, SUMSQ] = self._dist.sumsq_fp64(grads, lost)
            bad = np.flatnonzero(~np.isfinite(sumsq_h))
            if len(bad):  # exact counts only where a norm is not finite
                raw_h[bad, NONFINITE] = self._dist.count_nonfinite(grads, bad)
        if not opts.weights:
            raw_h[:, W_SUMSQ] = 0.0  # (NaN, not recorded: kept out of the sums)
        inv_h = None if inv_scale is None else 1 / float(scale_h[0])
        stats_h = stats_rows(rows.stack_host(raw_h, maxima=(MAXABS,)), inv_h, opts.weights)

        values = [stats_h[:, self._stat_cols].reshape(-1)]
        dead = stats_h[dead_rows, _DEAD_ROWS]
        if np.isnan(dead).any():  # a layer whose tensors with rows had no gradient (rare): not recorded
            first = len(stat_ids) - len(dead)
            ids = [stat_ids[:first], stat_ids[first:][~np.isnan(dead)]]
            values.append(dead[~np.isnan(dead)])
        else:
            ids = [stat_ids]
            values.append(dead)
        if loss is not None and not isinstance(loss, Tensor):
            loss_h = np.array([float(loss)])
        extra_ids, extra_vals = self._extra_rows(missing, stats_h[rows.model], scale_h, loss_h, extra_keys, act_h,
                                                 eval_mode)
        ids.append(np.asarray(extra_ids, dtype=np.int64))
        values.append(np.asarray(extra_vals, dtype=np.float64))
        if act_keys:
            self._layer_table.sync()
        if self._histograms is not None and present and self._histograms.due(recorded_index):
            # the gradient as stored: after unscale_ (no 1/scale to apply) it carries the scale no more
            stored_scale = scale if inv_scale is None else None
            h_ids, h_vals, h_keys, h_lo, h_dense = self._histograms.measure(grads, rows, stored_scale)
            ids.append(h_ids)
            values.append(h_vals)
            self._writer.write_histograms(step, h_keys, h_lo, h_dense)
            if self._listeners and self.writes_store:
                self._listeners.histograms(int(step), h_keys, h_lo, h_dense)
        self._series.flush()
        self._emit(step, np.concatenate(ids), np.concatenate(values), time.time())
        self.recorded_steps += 1
        if opts.optimizer is not None and self._updates.due(recorded_index):
            self._updates.arm(step, rows, raw[:, W_SUMSQ], recorded_index)
            if self._updates.unowned_grew:  # (what the doctor's not_updated reads)
                self._updates.unowned_grew = False
                self._writer.set_meta(outside_optimizers=sorted(self._updates.unowned))
            if self._adam:
                self._adam.arm(step, rows)
        return True

    def _rows_of(self, present: list[int], device: torch.device) -> tuple[StepRows, np.ndarray, np.ndarray]:
        """The :class:`StepRows` of a step whose parameters with a gradient are ``present``; the
        series ids of its statistics (``_stat_cols`` of every row, then ``grad_dead_rows`` of
        the rows it applies to), and those rows; kept while the same parameters have gradients
        step after step (forgotten when one joins)."""
        key = (tuple(present), device)
        if self._last_rows is None or self._last_rows[0] != key:
            rows = StepRows(present, self._param_layer, len(self._layer_names), device)
            dead_ids = rows.ids(self._dead_ids).reshape(-1)
            dead_rows = np.flatnonzero(dead_ids >= 0)
            ids = np.concatenate([rows.ids(self._stat_ids).reshape(-1), dead_ids[dead_rows]])
            self._last_rows = key, (rows, ids, dead_rows)
        return self._last_rows[1]

    def _join(self, step: int, joining: list[int]) -> None:
        """Parameters frozen at watch that have a gradient now (unfrozen since): their series, layers
        (the ``layers`` table is written again), ``params`` rows and meta ``unfrozen``, from this step on."""
        inv = self.inventory
        new_layers = []
        for i in joining:
            self._in_run[i] = True
            if inv.join(inv.params[i]):
                new_layers.append(int(self._param_layer[i]))
            self._unfrozen[self._param_names[i]] = step
        self._outside -= len(joining)
        self._last_rows = None  # (their ids are registered now)
        self._stat_ids.add(self._series, self._param_names, self._layer_names,
                           [GRAD_STATS[k] for k in self._stat_cols], joining, new_layers)
        self._add_dead_rows_ids(joining)
        if self._histograms is not None:
            self._histograms.add(joining, new_layers)
        self._series.flush()
        self._writer.write_params(param_rows(inv, [inv.params[i] for i in joining]))
        self._writer.set_meta(unfrozen=self._unfrozen, **sizes(inv))
        self._layer_table.changed()

    def _no_gradient(self, step: int, loss: Tensor | float | None) -> None:
        """A scheduled step at which no watched parameter has a gradient: no gradient statistics (they
        would be made up), the loss as a metric if given, and one warning."""
        if self.activations is not None:
            self.activations.collect()  # what the forward hooks took belongs to no recorded step
            self._layer_table.sync()
        if self._through_time is not None:
            self._through_time.collect()
        self._flush_pending()
        if loss is not None:  # as monitor.log() writes it: a metric, not a recorded step
            value = float(loss.detach().float()) if isinstance(loss, Tensor) else float(loss)
            ids = np.array([self._series.id(Level.METRIC, "loss", "loss")], dtype=np.int64)
            self._series.flush()
            self._emit(step, ids, np.array([value]))
        if not self._warned_no_gradient and self.inventory.watched:  # (nothing watched: said at watch)
            self._warned_no_gradient = True
            warnings.warn("gradsight: monitor.step() found no gradient on any parameter that requires one (every "
                          ".grad is None: an evaluation step under torch.no_grad(), zero_grad() before step(), or "
                          "gradients taken with torch.func or torch.autograd.grad without assigning .grad); no "
                          "gradient statistics are recorded for such a step", stacklevel=5)

    def _extra_rows(
        self,
        missing: list[int],
        model_stats: np.ndarray,
        scale_h: np.ndarray | None,
        loss_h: np.ndarray | None,
        act_keys: list[tuple[str, str, str]],
        act_h: np.ndarray | None,
        eval_mode: bool,
    ) -> tuple[list[int], list[float]]:
        """Series ids and values of a step besides the gradient statistics: whether the model was
        in eval mode, missing gradients, the loss scale and skipped steps, the loss, activation
        statistics."""
        series = self._series
        ids: list[int] = [series.id(Level.MODEL, "", EVAL_MODE_STAT)]
        vals: list[float] = [float(eval_mode)]
        for i in missing:
            ids.append(series.id(Level.PARAM, self._param_names[i], "grad_missing"))
            vals.append(1.0)
        if missing:
            ids.append(series.id(Level.MODEL, "", "grad_missing"))
            vals.append(float(len(missing)))
        if scale_h is not None:
            skipped = float(not np.isfinite(model_stats[0]) or model_stats[_NONFINITE] > 0)
            ids += [series.id(Level.MODEL, "", "loss_scale"), series.id(Level.MODEL, "", "skipped")]
            vals += [float(scale_h[0]), skipped]
        if loss_h is not None:
            ids.append(series.id(Level.METRIC, "loss", "loss"))
            vals.append(float(loss_h[0]))
        if act_keys:
            ids += [series.id(*key) for key in act_keys]
            vals += act_h.tolist()
        return ids, vals

    # -- user metrics -------------------------------------------------------------------
    def log(self, metrics: dict[str, float | Tensor], step: int | None = None) -> None:
        """Record scalar metrics (e.g. per-epoch loss and accuracy) at ``step``.

        ``step`` defaults to the index of the last :meth:`step` call (before the first,
        the first's). A resumed run refuses a step before the one it goes on at.
        """
        if self._closed:
            raise RuntimeError("this monitor is closed")
        at = self.resumption.start + max(self.step_count - 1, 0) if step is None else int(step)
        self._check_floor(at)
        ids, vals = [], []
        for key, value in metrics.items():
            ids.append(self._series.id(Level.METRIC, str(key), str(key)))
            vals.append(float(value.item() if isinstance(value, Tensor) else value))
        self._series.flush()
        self._emit(at, np.asarray(ids, dtype=np.int64), np.asarray(vals, dtype=np.float64))

    # -- lifecycle ----------------------------------------------------------------------
    def _flush_pending(self) -> None:
        for pstep, ids, values in self._updates.take_pending() + self._adam.take_pending():
            self._emit(pstep, ids, values.detach().cpu().double().numpy())

    def flush(self) -> None:
        """Commit everything recorded so far to disk (blocks until done)."""
        if self._closed:
            return
        self._layer_table.sync()
        self._flush_pending()
        self._writer.flush()

    def set_meta(self, **items: Any) -> None:
        """Store extra run metadata (JSON-serializable values)."""
        self._writer.set_meta(**items)

    def close(self, status: str = "finished", error: str | None = None) -> None:
        """Remove every hook, write what is pending and finish the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._hooks.remove_all()
        try:
            self._layer_table.sync()
            self._flush_pending()
            self._sync_params()
        finally:
            self._updates.release()
            meta: dict[str, Any] = {"steps_recorded": self.recorded_steps, "step_calls": self.step_count}
            earlier = self._writer.earlier
            if earlier is not None:  # a resumed run: its steps kept, and the calls from the step it went on at
                cut = self.resumption.cut
                meta["steps_recorded"] += sum(cut is None or s < cut for s in earlier.steps)
                meta["step_calls"] += self.resumption.start
            if error is not None:
                meta["error"] = error
            self._writer.close(status=status, **meta)
            _OPEN_MONITORS.discard(self)
            self._listeners.closed()

    @property
    def closed(self) -> bool:
        return self._closed

    def open(self):
        """Flush and open this run for reading (:class:`gradsight.Run`)."""
        from gradsight.store.reader import open_run

        self.flush()
        return open_run(self.run_dir)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.close(*end_status(exc))

    def __repr__(self) -> str:
        return f"Monitor(run_dir={str(self.run_dir)!r}, params={len(self.inventory.watched)}, steps={self.step_count})"

    def _repr_html_(self) -> str:
        """This run in a notebook, as :meth:`gradsight.Run._repr_html_` shows it, read from the
        store after :meth:`flush` (which commits what was recorded; nothing else is written)."""
        self.flush()
        return card_html(self)


def watch(model: nn.Module, run_dir: str | Path | None = None, **options: Any) -> Monitor:
    """Start recording gradient statistics of ``model`` into ``run_dir``.

    Args:
        model: the model; every trainable parameter is watched (tied ones count
            once). Frozen ones are listed in the store, and recorded from the first
            step they have a gradient if unfrozen later; a parameter frozen later is
            not recorded while frozen. Lazy modules must have run a forward pass.
        run_dir: directory of the run store (default ``runs/<time>-<Model>``).
        every: record every k-th call of ``monitor.step()``, or a schedule
            (``step -> bool``, see :mod:`gradsight.schedules`).
        optimizer: an optimizer, or a list of them (one per parameter set: SparseAdam
            and Adam, Muon and AdamW); when given, ``update_ratio`` (||dw|| / ||w||
            across the step of the optimizer that holds the parameter) is recorded too
            (see ``update_ratio``); parameters that none of them holds get none.
            Unless ``update_ratio=False`` this keeps a copy of one chunk of the watched
            layers' weights between measured steps (at most 1/8 of the weights' bytes or
            16 MiB, whichever is more; all of them with ``update_ratio="whole"``; freed
            by ``close()``).
        scaler: a ``torch.amp.GradScaler``: values are reported unscaled and steps
            with non-finite gradients (which the scaler skips) are marked ``skipped``;
            a disabled one (``enabled=False``) is taken as none.
        config: JSON-serializable settings stored with the run.
        name: a display name (default: the directory name).
        backend: the statistics kernels: ``"auto"`` (small tensors grouped, the others on
            the CPU through the C kernel built at the first recorded step, else eager),
            ``"fused"`` (the C kernel for every tensor it takes, saying so once where it is
            unavailable) or ``"eager"`` (PyTorch's multi-tensor kernels only).
        overwrite: replace a run already in ``run_dir`` instead of raising.
        resume: continue the run in ``run_dir``: ``True`` after the last step it
            recorded, or a step (a training resumed from a checkpoint of that step:
            what the run recorded from that step on is removed, with a warning saying
            how much). The default step of ``monitor.step()`` goes on from there, and a
            step before it raises ``ValueError``: a recorded step is never written
            twice. The run must be of the same model (the same parameter names); its
            start time, name and config (unless given) are kept, and ``meta.resumed``
            lists each resumption. A ``run_dir`` without a run starts a new one.
            ``resume`` with ``overwrite=True`` is a ``ValueError``.
        distributed: under ``torch.distributed`` with several processes, ``"auto"``
            records the global batch's statistics and only rank 0 writes the store;
            ``None`` turns this off. See :mod:`gradsight.instrument.distributed`.
        activations: also record statistics of module outputs and of the gradient
            arriving at them (level ``module``), and the skip/branch split of the
            gradient at every residual block (level ``block``). ``True`` tracks every
            leaf module with parameters and every residual block; a pattern or list
            of fnmatch patterns picks modules by name.
        residual_blocks: names of modules expected to own residual additions;
            detection does not depend on it, a warning names those that own none.
        weights: ``False`` skips ``weight_norm`` and ``grad_weight_ratio``, saving one
            pass over the weights' memory at every recorded step.
        histograms: ``True`` (every recorded step) or ``k`` (every k-th recorded step,
            the first included): a log2-magnitude histogram of the gradient per layer
            and for the model (``Run.histograms()``), and the precision headroom
            ``fp16_underflow``, ``bf16_underflow``, ``fp8e4m3_underflow``,
            ``fp8e5m2_underflow``, ``fp16_overflow``, ``fp8e4m3_overflow``,
            ``fp8e5m2_overflow`` per parameter, layer and model, on the gradient as
            stored (times the loss scale with ``scaler=``).
        update_ratio: with ``optimizer=``, measure ``update_ratio`` at every (``True``)
            or every k-th (``k``, the first recorded step included) recorded step, or
            never (``False``). Default 10: each measured step copies the watched
            weights of one chunk of layers before the optimizer step and takes the
            norm of the difference after it; the chunks take turns, so each layer is
            recorded at one measured step in ``n_chunks`` (weights of up to 16 MiB are
            one chunk: every layer at every measured step; see
            :mod:`gradsight.instrument.update_ratio`); the other recorded steps copy
            nothing. ``"whole"``: every layer at every recorded step, from a copy of all
            the watched weights kept between steps (memory the size of the weights, in
            float32 for 16-bit ones): what the model check (``gs.checkup``,
            ``gradsight doctor MODEL``) records, as the doctor's thresholds were calibrated on.
        through_time: record the gradient reaching each time step's hidden state,
            ``‖∂L/∂h_t‖`` of the output sequence of every ``nn.LSTM``/``nn.GRU``/``nn.RNN``
            (level ``module``, ``out_grad_norm_t0``, ``out_grad_norm_t1``, ...;
            ``gs.plots.through_time``); one tensor hook and one reduction per call. And
            the gain per step of the gradient through time (``time_grad_gain``,
            ``time_grad_gain_reverse``, ``time_steps``: :func:`gradsight.instrument.recurrent.time_gains`),
            from a probe at each recorded step: a forward and a backward pass of the
            recurrent module on 4 samples (per direction). The check-up records both.
        noise_scale: the gradient noise scale ``B_simple = tr(Σ) / |G|²`` (McCandlish et
            al. 2018) per layer and for the model (``gns_grad_sq``, ``gns_trace``, ``gns``,
            ``gns_batch``), from each micro-batch's gradient against the step's: needs gradient
            accumulation (several backward passes per ``step()``) or DDP. ``True``: in
            micro-batches; ``b`` (an int): in samples, ``b`` per micro-batch on each process.
            A tensor hook per parameter takes each micro-batch's gradient norm at recorded
            steps (nothing is copied). See :mod:`gradsight.instrument.noise_scale`.

    The keyword arguments, their defaults and types are declared once, by
    :func:`gradsight.instrument.options.watch_options` (the signature shown here is read
    from it), and resolved into ``monitor.options`` (a frozen
    :class:`~gradsight.instrument.options.WatchOptions`).

    Returns:
        The :class:`Monitor`; call ``monitor.step()`` after each backward pass and
        ``monitor.close()`` at the end (or use it as a context manager).
    """
    return Monitor(model, run_dir, **options)


Monitor.__init__.__signature__ = with_options(Monitor.__init__)  # type: ignore[attr-defined]
watch.__signature__ = inspect.signature(Monitor).replace(return_annotation="Monitor")  # type: ignore[attr-defined]
