"""The gradient monitor: ``gs.watch(model, ...)`` and ``monitor.step()``.

Data flow of one recorded step (see docs/design.md):

1. ``monitor.step()`` collects each trainable parameter's ``.grad`` (tensors are
   only referenced, never copied).
2. :func:`gradsight.stats.grad.raw_sums` reduces every gradient and weight to
   seven raw sums in one fused pass (or a few multi-tensor passes).
3. Raw sums are aggregated per layer and for the whole model on the device, and
   the statistics are derived, vectorized.
4. Everything for the step (plus the update ratios of the previous optimizer
   step) crosses to the host in a single transfer.
5. The values, with precomputed series ids, go on the writer's queue; the
   writer thread inserts them and commits at least every second.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import time
import weakref
from datetime import datetime
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gradsight import schedules
from gradsight.instrument.activations import ActivationRecorder
from gradsight.instrument.hooks import HookRegistry
from gradsight.integrations.distributed import resolve as resolve_distributed
from gradsight.instrument.layers import ForwardOrder, Inventory
from gradsight.stats.grad import GRAD_STATS, NONFINITE, SUMSQ, W_SUMSQ, aggregate, count_nonfinite, derive_stats, raw_sums
from gradsight.store.writer import StoreWriter

log = logging.getLogger(__name__)

_OPEN_MONITORS: weakref.WeakSet = weakref.WeakSet()

#: Statistics recorded at every level, in addition to GRAD_STATS, when they apply.
EXTRA_STATS = ("update_ratio", "grad_missing", "skipped", "loss_scale")


@atexit.register
def _close_open_monitors() -> None:
    for mon in list(_OPEN_MONITORS):
        try:
            mon.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def _default_run_dir(model: nn.Module) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{type(model).__name__}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = Path(f"{base}-{k}")
    return path


class Monitor:
    """Records gradient statistics of a model at chosen calls of :meth:`step`.

    Create with :func:`gradsight.watch`. Usable as a context manager; leaving the
    block (also through an exception) calls :meth:`close`.
    """

    def __init__(
        self,
        model: nn.Module,
        run_dir: str | Path | None = None,
        *,
        every: int | schedules.Schedule = 1,
        optimizer: torch.optim.Optimizer | None = None,
        scaler: Any | None = None,
        config: dict | None = None,
        name: str | None = None,
        backend: str = "auto",
        overwrite: bool = False,
        distributed: str | None = "auto",
        activations: bool | str | Sequence[str] = False,
        residual_blocks: Sequence[str] | None = None,
        weights: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"gs.watch expects a torch.nn.Module, got {type(model).__name__}")
        if backend not in ("auto", "eager", "fused"):
            raise ValueError(f"backend must be 'auto', 'eager' or 'fused', got {backend!r}")
        self.model = model
        self.schedule = schedules.resolve(every)
        self.optimizer = optimizer
        self.scaler = scaler
        self.backend = backend
        self.weights = weights
        self._stat_cols = [k for k, st in enumerate(GRAD_STATS)
                           if weights or st not in ("weight_norm", "grad_weight_ratio")]
        kept_stats = [GRAD_STATS[k] for k in self._stat_cols]
        self.run_dir = Path(run_dir) if run_dir is not None else _default_run_dir(model)
        self.step_count = 0  #: number of step() calls so far
        self.recorded_steps = 0
        self._closed = False
        self._hooks = HookRegistry()

        self.inventory = inv = Inventory.of(model)
        self._watched = [pi.param for pi in inv.watched]
        self._layer_index = {ln: i for i, ln in enumerate(inv.layers)}
        self._param_layer = torch.tensor([self._layer_index[pi.layer] for pi in inv.watched], dtype=torch.long)

        # distributed training (gradsight.integrations.distributed): only rank 0 writes the store
        self._dist = resolve_distributed(distributed, model)
        self._writer = StoreWriter(self.run_dir, overwrite=overwrite) if self._dist is None else self._dist.writer(self.run_dir, overwrite)
        self._series: dict[tuple[str, str, str], int] = {}
        self._key_of: dict[int, tuple[str, str, str]] = {}
        self._listeners: list = []
        self._close_listeners: list = []
        self._failed_listeners: set[int] = set()
        self._new_series: list[tuple[int, str, str, str]] = []
        n_stats = len(kept_stats)
        self._param_ids = np.array(
            [[self._sid("param", pi.name, s) for s in kept_stats] for pi in inv.watched], dtype=np.int64
        ).reshape(len(inv.watched), n_stats)
        self._layer_ids = np.array(
            [[self._sid("layer", ln, s) for s in kept_stats] for ln in inv.layers], dtype=np.int64
        ).reshape(len(inv.layers), n_stats)
        self._model_ids = np.array([self._sid("model", "", s) for s in kept_stats], dtype=np.int64)
        self._flush_series()

        device = next((p.device for p in self._watched), torch.device("cpu"))
        self._writer.set_meta(
            name=name or self.run_dir.name,
            status="running",
            start_time=time.time(),
            model_class=f"{type(model).__module__}.{type(model).__qualname__}",
            torch_version=torch.__version__,
            gradsight_version=_version(),
            config=config or {},
            schedule=getattr(self.schedule, "__name__", repr(self.schedule)),
            backend=backend,
            weight_stats=weights,
            device=str(device),
            num_params=sum(pi.param.numel() for pi in inv.params),
            num_trainable=sum(pi.param.numel() for pi in inv.watched),
            optimizer=type(optimizer).__name__ if optimizer is not None else None,
            amp=scaler is not None,
            depth_source="pending",
            host=socket.gethostname(),
            pid=os.getpid(),
            argv=sys.argv,
        )
        self._writer.write_params(
            [
                (pi.name, pi.layer, _json_list(pi.param.shape), pi.param.numel(), str(pi.param.dtype).replace("torch.", ""),
                 int(pi.trainable), _json_list(pi.aliases), pi.position)
                for pi in inv.params
            ]
        )
        self._layers_written: tuple | None = None
        self._layers_final = False
        self._order = ForwardOrder(model, self._hooks)
        self.activations: ActivationRecorder | None = None
        if activations:
            self.activations = ActivationRecorder(
                model, activations, residual_blocks, self._hooks, is_active=lambda: not self._closed and self.should_record()
            )

        # update ratio bookkeeping
        self._update_step: int | None = None
        self._update_present: list[int] = []
        self._update_wsumsq: Tensor | None = None
        self._snapshot: list[Tensor] | None = None
        self._pending: list[tuple[int, np.ndarray, Tensor]] = []  # (step, series ids, device values)
        if optimizer is not None:
            self._hooks.add(optimizer.register_step_pre_hook(self._on_optimizer_pre), "optimizer")
            self._hooks.add(optimizer.register_step_post_hook(self._on_optimizer_post), "optimizer")
        self._writer.flush()  # metadata on disk at once: a reader sees status 'running', not 'unknown'
        _OPEN_MONITORS.add(self)

    # -- series ids -----------------------------------------------------------------
    def _sid(self, level: str, name: str, stat: str) -> int:
        key = (level, name, stat)
        sid = self._series.get(key)
        if sid is None:
            sid = len(self._series) + 1
            self._series[key] = sid
            self._key_of[sid] = key
            self._new_series.append((sid, level, name, stat))
        return sid

    # -- writing and listening --------------------------------------------------------
    def _emit(self, step: int, ids: np.ndarray, values: np.ndarray, time_s: float | None = None) -> None:
        """Queue values for the store and hand them to the listeners."""
        self._writer.write_scalars(step, ids, values, time_s)
        if not self._listeners or not self.writes_store:
            return
        keys = [self._key_of[int(i)] for i in np.asarray(ids).tolist()]
        vals = np.asarray(values, dtype=np.float64)
        for listener in list(self._listeners):
            self._call_listener(listener, int(step), keys, vals)

    def _call_listener(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # a listener never breaks training
            if id(fn) not in self._failed_listeners:
                self._failed_listeners.add(id(fn))
                log.error("gradsight: a listener (%r) failed: %s", fn, exc)

    def add_listener(self, listener, on_close=None):
        """Call ``listener(step, keys, values)`` for everything recorded from now on.

        ``keys[i] = (level, name, stat)`` names ``values[i]`` (a float64 array). It is
        called on the training thread right after the values are queued for the
        store, only in the process that writes the store (rank 0 under
        ``torch.distributed``); an exception in it is logged once and never reaches
        the training loop. ``on_close()`` is called once after the store is closed.

        Returns:
            A function that removes the listener (and ``on_close``).
        """
        self._listeners.append(listener)
        if on_close is not None:
            self._close_listeners.append(on_close)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)
            if on_close is not None and on_close in self._close_listeners:
                self._close_listeners.remove(on_close)

        return remove

    @property
    def writes_store(self) -> bool:
        """Whether this process writes the store (False on ranks other than 0)."""
        return self._dist is None or self._dist.writes_store

    def _flush_series(self) -> None:
        if self._new_series:
            self._writer.add_series(self._new_series)
            self._new_series = []

    # -- layer order ----------------------------------------------------------------
    def _sync_layer_order(self) -> None:
        """Write the layers table once the forward order (or new blocks) are known.

        ``depth`` ranks layers among layers, residual blocks among blocks and other
        tracked modules among all tracked modules, each in forward-execution order.
        Once the order and the residual blocks are final this returns at once.
        """
        if self._layers_final:
            return
        source = "forward" if self._order.done else "registration"
        kinds = {ln: "layer" for ln in self.inventory.layers}
        if self.activations is not None:
            for name, kind in self.activations.module_kinds().items():
                if kind == "block" or name not in kinds:
                    kinds[name] = kind
        signature = (source, tuple(sorted(kinds.items())))
        if signature == self._layers_written:
            return
        types = dict(self.inventory.layer_types)
        if self.activations is not None:
            types.update(self.activations.types)
        rows = []
        for kind in ("layer", "block", "module"):
            names = [n for n, k in kinds.items() if k == kind or (kind == "module" and k == "layer")]
            ranked = self._order.rank(names)
            rows += [(n, d, types.get(n, "?"), kind) for d, n in enumerate(ranked) if kinds[n] == kind]
        self._writer.write_layers(rows)
        self._writer.set_meta(depth_source=source)
        self._layers_written = signature
        if self._order.done and (self.activations is None or self.activations.blocks_known):
            self._order.remove()
            self._layers_final = True

    # -- recording --------------------------------------------------------------------
    def should_record(self, step: int | None = None) -> bool:
        """Whether the given (default: next) call of :meth:`step` is recorded."""
        return bool(self.schedule(self.step_count if step is None else step))

    def step(self, loss: Tensor | float | None = None, *, step: int | None = None) -> bool:
        """Record the gradients as they are now, if this call is scheduled.

        Call after ``loss.backward()`` (and any gradient accumulation) and before
        ``optimizer.step()``.

        Args:
            loss: optionally the loss, recorded as the metric ``loss``.
            step: the step index to record under (default: the number of earlier
                calls, starting at 0).

        Returns:
            True when this call was recorded.
        """
        if self._closed:
            raise RuntimeError("this monitor is closed")
        index = self.step_count if step is None else int(step)
        record = self.should_record(self.step_count)
        self.step_count += 1
        if not record:
            return False
        self._record(index, loss)
        return True

    @torch.no_grad()
    def _record(self, step: int, loss: Tensor | float | None) -> None:
        self._sync_layer_order()
        self._update_step = None  # an optimizer step not seen since the last record
        self._snapshot = None
        watched = self._watched
        present = [i for i, p in enumerate(watched) if p.grad is not None]
        missing = [i for i, p in enumerate(watched) if p.grad is None]
        grads = [watched[i].grad for i in present]
        raw = (self._dist.raw_sums if self._dist is not None else raw_sums)(grads, [watched[i] for i in present], self.backend, self.weights)
        device = raw.device
        n_layers = len(self.inventory.layers)
        group = self._param_layer[present].to(device)
        raw_layers = aggregate(raw, group, n_layers)
        raw_model = aggregate(raw, torch.zeros(len(present), dtype=torch.long, device=device), 1)
        inv_scale, scale = self._loss_scale(device)
        stats = derive_stats(torch.cat([raw, raw_layers, raw_model]), inv_scale)

        to_host = [stats.reshape(-1), raw[:, SUMSQ]]
        if scale is not None:
            to_host.append(scale.reshape(1).float())
        if isinstance(loss, Tensor):
            to_host.append(loss.detach().float().reshape(1).to(device))
        act_keys: list[tuple[str, str, str]] = []
        if self.activations is not None:
            act_keys, act_values = self.activations.collect(inv_scale)
            if act_keys:
                to_host.append(torch.stack([v.float().to(device) for v in act_values]))
        pending, self._pending = self._pending, []
        to_host.extend(v.to(device) for _, _, v in pending)
        host = torch.cat(to_host).cpu().numpy()  # the one device-to-host transfer

        n_rows, n_stats = stats.shape
        stats_h = host[: n_rows * n_stats].reshape(n_rows, n_stats)
        off = n_rows * n_stats
        sumsq_h = host[off : off + len(present)]
        off += len(present)
        scale_h = loss_h = None
        if scale is not None:
            scale_h, off = float(host[off]), off + 1
        if isinstance(loss, Tensor):
            loss_h, off = float(host[off]), off + 1
        act_h = host[off : off + len(act_keys)]
        off += len(act_keys)
        if loss is not None and not isinstance(loss, Tensor):
            loss_h = float(loss)
        for pstep, ids, values in pending:
            self._emit(pstep, ids, host[off : off + len(ids)])
            off += len(ids)

        n_present = len(present)
        param_stats = stats_h[:n_present]
        layer_stats = stats_h[n_present : n_present + n_layers]
        model_stats = stats_h[n_present + n_layers]
        nonfinite_col = GRAD_STATS.index("grad_nonfinite")
        bad = np.flatnonzero(~np.isfinite(sumsq_h))
        if len(bad):  # exact counts only where a norm is not finite (rare)
            counts = np.zeros(n_present)
            counts[bad] = self._dist.count_nonfinite(grads, bad) if self._dist is not None else [count_nonfinite(grads[k]) for k in bad]
            param_stats[:, nonfinite_col] = counts
            layer_counts = np.zeros(n_layers)
            np.add.at(layer_counts, group.cpu().numpy(), counts)
            layer_stats[:, nonfinite_col] = layer_counts
            model_stats[nonfinite_col] = counts.sum()

        present_layers = sorted({self._layer_index[self.inventory.watched[i].layer] for i in present})
        ids = [self._param_ids[present].reshape(-1), self._layer_ids[present_layers].reshape(-1), self._model_ids]
        cols = self._stat_cols
        values = [param_stats[:, cols].reshape(-1), layer_stats[present_layers][:, cols].reshape(-1), model_stats[cols]]
        extra_ids, extra_vals = [], []
        for i in missing:
            extra_ids.append(self._sid("param", self.inventory.watched[i].name, "grad_missing"))
            extra_vals.append(1.0)
        if missing:
            extra_ids.append(self._sid("model", "", "grad_missing"))
            extra_vals.append(float(len(missing)))
        if scale_h is not None:
            skipped = float(not np.isfinite(model_stats[0]) or model_stats[nonfinite_col] > 0)
            extra_ids += [self._sid("model", "", "loss_scale"), self._sid("model", "", "skipped")]
            extra_vals += [scale_h, skipped]
        if loss_h is not None:
            extra_ids.append(self._sid("metric", "loss", "loss"))
            extra_vals.append(loss_h)
        for key, value in zip(act_keys, act_h.tolist()):
            extra_ids.append(self._sid(*key))
            extra_vals.append(value)
        if act_keys:
            self._sync_layer_order()
        self._flush_series()
        self._emit(
            step,
            np.concatenate(ids + [np.asarray(extra_ids, dtype=np.int64)]),
            np.concatenate(values + [np.asarray(extra_vals, dtype=np.float64)]).astype(np.float64),
            time.time(),
        )
        self.recorded_steps += 1

        if self.optimizer is not None and present:
            self._update_step = step
            self._update_present = present
            self._update_wsumsq = raw[:, W_SUMSQ]
            self._update_group = group
            self._update_layers = present_layers  # host-side copy: no device sync in the post-hook
            self._snapshot = None
            self._on_optimizer_pre()

    def _loss_scale(self, device: torch.device) -> tuple[Tensor | None, Tensor | None]:
        """(1/scale to apply, scale to record) for a GradScaler, else (None, None)."""
        scaler = self.scaler
        if scaler is None or not getattr(scaler, "is_enabled", lambda: True)():
            return None, None
        scale = getattr(scaler, "_scale", None)
        if scale is None:  # scaler.scale() never called yet
            return None, None
        scale = scale.to(device).float()
        if self._already_unscaled():
            return None, scale
        return scale.reciprocal(), scale

    def _already_unscaled(self) -> bool:
        states = getattr(self.scaler, "_per_optimizer_states", {})
        opts = [self.optimizer] if self.optimizer is not None else None
        for key, state in states.items():
            if opts is not None and key != id(opts[0]):
                continue
            stage = state.get("stage")
            if getattr(stage, "name", None) == "UNSCALED":
                return True
        return False

    # -- update ratio ---------------------------------------------------------------
    def _on_optimizer_pre(self, optimizer: torch.optim.Optimizer | None = None, args: tuple = (), kwargs: dict | None = None) -> None:
        """Snapshot the weights of a recorded step before the optimizer changes them.

        Taken at the end of the recording itself (so optimizers that call
        ``step(closure)`` and record inside the closure, like Lightning's, are
        measured too); the step pre-hook only takes it when none was taken.
        """
        if self._update_step is None or self._snapshot is not None:
            return
        with torch.no_grad():
            self._snapshot = torch._foreach_mul([self._watched[i].detach() for i in self._update_present], 1.0)

    def _on_optimizer_post(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self._update_step is None or self._snapshot is None:
            return
        with torch.no_grad():
            current = [self._watched[i].detach() for i in self._update_present]
            delta = torch._foreach_sub(current, self._snapshot)
            dsq = self._dist.sumsq(delta) if self._dist is not None else torch.stack(torch._foreach_norm(delta, 2, dtype=torch.float32)).pow(2)
            wsq = self._update_wsumsq
            if not self.weights:  # weight norms were not taken at record time
                wsq = torch.stack(torch._foreach_norm(self._snapshot, 2, dtype=torch.float32)).pow(2)
            n_layers = len(self.inventory.layers)
            group = self._update_group
            layer_dsq = torch.zeros(n_layers, device=dsq.device).index_add_(0, group, dsq)
            layer_wsq = torch.zeros(n_layers, device=dsq.device).index_add_(0, group, wsq)
            present_layers = self._update_layers
            ratios = torch.cat(
                [
                    (dsq / wsq).sqrt(),
                    (layer_dsq[present_layers] / layer_wsq[present_layers]).sqrt(),
                    (dsq.sum() / wsq.sum()).sqrt().reshape(1),
                ]
            )
        inv = self.inventory
        ids = [self._sid("param", inv.watched[i].name, "update_ratio") for i in self._update_present]
        ids += [self._sid("layer", inv.layers[k], "update_ratio") for k in present_layers]
        ids.append(self._sid("model", "", "update_ratio"))
        self._flush_series()
        self._pending.append((self._update_step, np.asarray(ids, dtype=np.int64), ratios))
        self._update_step = None
        self._snapshot = None

    # -- user metrics -------------------------------------------------------------------
    def log(self, metrics: dict[str, float | Tensor], step: int | None = None) -> None:
        """Record scalar metrics (e.g. per-epoch loss and accuracy) at ``step``.

        ``step`` defaults to the index of the last :meth:`step` call.
        """
        if self._closed:
            raise RuntimeError("this monitor is closed")
        at = max(self.step_count - 1, 0) if step is None else int(step)
        ids, vals = [], []
        for key, value in metrics.items():
            ids.append(self._sid("metric", str(key), str(key)))
            vals.append(float(value.item() if isinstance(value, Tensor) else value))
        self._flush_series()
        self._emit(at, np.asarray(ids, dtype=np.int64), np.asarray(vals, dtype=np.float64))

    # -- lifecycle ----------------------------------------------------------------------
    def _flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        for pstep, ids, values in pending:
            self._emit(pstep, ids, values.detach().cpu().double().numpy())

    def flush(self) -> None:
        """Commit everything recorded so far to disk (blocks until done)."""
        if self._closed:
            return
        self._sync_layer_order()
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
            self._sync_layer_order()
            self._flush_pending()
        finally:
            self._snapshot = None
            meta: dict[str, Any] = {"steps_recorded": self.recorded_steps, "step_calls": self.step_count}
            if error is not None:
                meta["error"] = error
            self._writer.close(status=status, **meta)
            _OPEN_MONITORS.discard(self)
            for fn in list(self._close_listeners):
                self._call_listener(fn)

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
            self.close(status="failed", error=f"{exc_type.__name__}: {exc}")

    def __repr__(self) -> str:
        return f"Monitor(run_dir={str(self.run_dir)!r}, params={len(self._watched)}, steps={self.step_count})"


def watch(
    model: nn.Module,
    run_dir: str | Path | None = None,
    *,
    every: int | schedules.Schedule = 1,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: Any | None = None,
    config: dict | None = None,
    name: str | None = None,
    backend: str = "auto",
    overwrite: bool = False,
    distributed: str | None = "auto",
    activations: bool | str | Sequence[str] = False,
    residual_blocks: Sequence[str] | None = None,
    weights: bool = True,
) -> Monitor:
    """Start recording gradient statistics of ``model`` into ``run_dir``.

    Args:
        model: the model; every trainable parameter is watched (frozen ones are
            listed in the store but not recorded; tied ones count once).
        run_dir: directory of the run store (default ``runs/<time>-<Model>``).
        every: record every k-th call of ``monitor.step()``, or a schedule
            (``step -> bool``, see :mod:`gradsight.schedules`).
        optimizer: when given, ``update_ratio`` (||dw|| / ||w|| across the
            optimizer step) is recorded too; on recorded steps this keeps a copy of
            the weights until the optimizer step.
        scaler: a ``torch.amp.GradScaler``: values are reported unscaled and steps
            with non-finite gradients (which the scaler skips) are marked ``skipped``.
        config: JSON-serializable settings stored with the run.
        name: a display name (default: the directory name).
        backend: ``"auto"``, ``"eager"`` or ``"fused"`` statistics kernels.
        overwrite: replace a run already in ``run_dir`` instead of raising.
        distributed: under ``torch.distributed`` with several processes, ``"auto"``
            records the global batch's statistics and only rank 0 writes the store;
            ``None`` turns this off. See :mod:`gradsight.integrations.distributed`.
        activations: also record statistics of module outputs and of the gradient
            arriving at them (level ``module``), and the skip/branch split of the
            gradient at every residual block (level ``block``). ``True`` tracks every
            leaf module with parameters and every residual block; a pattern or list
            of fnmatch patterns picks modules by name.
        residual_blocks: names of modules to treat as residual blocks where
            automatic detection does not see them.
        weights: ``False`` skips ``weight_norm`` and ``grad_weight_ratio``, saving one
            pass over the weights' memory at every recorded step.

    Returns:
        The :class:`Monitor`; call ``monitor.step()`` after each backward pass and
        ``monitor.close()`` at the end (or use it as a context manager).
    """
    return Monitor(
        model, run_dir, every=every, optimizer=optimizer, scaler=scaler, config=config, name=name,
        backend=backend, overwrite=overwrite, distributed=distributed, activations=activations, residual_blocks=residual_blocks, weights=weights,
    )


def _json_list(seq) -> str:
    import json

    return json.dumps(list(seq))


def _version() -> str:
    from gradsight import __version__

    return __version__
