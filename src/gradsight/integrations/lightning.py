"""Lightning: ``GradFlowCallback`` records gradient statistics during ``Trainer.fit``.

::

    from gradsight.integrations.lightning import GradFlowCallback

    trainer = L.Trainer(callbacks=[GradFlowCallback(every=10)], accumulate_grad_batches=4)
    trainer.fit(module, loader)            # store: <trainer.log_dir>/gradsight

Statistics are recorded in ``on_before_optimizer_step``: once per optimizer step,
after every micro-batch of gradient accumulation has been added in, after a
``16-mixed`` ``GradScaler`` has unscaled the gradients (the scale is recorded as
``loss_scale``) and before gradient clipping. The step index is
``trainer.global_step`` (optimizer steps so far). The loss recorded with a step is
the sum of the micro-batch losses Lightning backpropagated for it (each divided by
``accumulate_grad_batches``), i.e. the loss whose gradient was measured.

Layer- and model-level statistics also go to the trainer's loggers
(``trainer.loggers``), tagged ``gradsight/layer/grad_norm/<layer>``,
``gradsight/model/update_ratio`` and so on. Under DDP or FSDP (``fully_shard``)
every rank records and rank 0 writes (see :mod:`gradsight.instrument.distributed`).

Needs ``lightning``: ``pip install "gradsight[lightning]"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the standalone package
    try:
        from pytorch_lightning import Callback  # type: ignore[no-redef]
    except ImportError:
        raise ImportError(
            "gradsight.integrations.lightning needs Lightning: pip install 'gradsight[lightning]'"
        ) from None

import gradsight.schedules as schedules
from gradsight.instrument.monitor import Monitor, end_status, watch
from gradsight.instrument.options import check_options, watch_arguments
from gradsight.integrations._tap import Key, scalar_tag, select

__all__ = ["GradFlowCallback"]


class GradFlowCallback(Callback):
    """Records gradient statistics of the ``LightningModule`` into a gradsight run.

    Args:
        run_dir: run directory (default ``<trainer.log_dir>/gradsight``).
        every: record every k-th optimizer step, or a schedule (``step -> bool``).
        log_levels: levels sent to the trainer's loggers (``()`` for none);
            everything is always written to the run store.
        log_stats: statistics sent to the loggers (default: all).
        **watch_kwargs: passed to :func:`gradsight.watch` (``config``, ``name``,
            ``backend``, ``overwrite``, ``distributed``, ``update_ratio``, ...). The
            optimizers (all of them: manual optimization may have several, a GAN's
            generator and discriminator) and the ``GradScaler`` of ``16-mixed``
            precision are taken from the trainer.

    After ``fit``, :attr:`monitor` is the closed monitor and :attr:`run_dir` the run.
    """

    def __init__(
        self,
        run_dir: str | Path | None = None,
        *,
        every: int | schedules.Schedule = 1,
        log_levels: Sequence[str] = ("layer", "model"),
        log_stats: Sequence[str] | None = None,
        **watch_kwargs: Any,
    ) -> None:
        super().__init__()
        check_options(watch_kwargs, "GradFlowCallback", taken=("optimizer", "scaler"), source="from the trainer")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.every = every
        self.log_levels = tuple(log_levels)
        self.log_stats = tuple(log_stats) if log_stats is not None else None
        self.watch_kwargs = watch_kwargs
        self.monitor: Monitor | None = None
        self._trainer: Any = None
        self._loss: torch.Tensor | None = None
        self._stepped_at: int | None = None  # the optimizer step taken in this batch
        self._recorded = False  # whether that step was recorded

    # -- lifecycle --------------------------------------------------------------------
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None and not self.monitor.closed:
            return
        if self.run_dir is None:
            self.run_dir = Path(trainer.log_dir or trainer.default_root_dir) / "gradsight"
        optimizers = list(trainer.optimizers)
        precision = trainer.precision_plugin
        config = {
            "lightning": {
                "precision": str(trainer.precision),
                "accumulate_grad_batches": trainer.accumulate_grad_batches,
                "gradient_clip_val": trainer.gradient_clip_val,
                "gradient_clip_algorithm": trainer.gradient_clip_algorithm,
                "world_size": trainer.world_size,
                "strategy": type(trainer.strategy).__name__,
            },
        }
        self.monitor = watch(pl_module, self.run_dir, **watch_arguments(
            self.watch_kwargs, "GradFlowCallback", every=self.every,
            optimizer=optimizers[0] if len(optimizers) == 1 else optimizers or None,
            scaler=getattr(precision, "scaler", None), config=config))
        self._trainer = trainer
        if self.log_levels:
            self.monitor.add_listener(self._to_loggers)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.monitor is None or self.monitor.closed:
            return
        step = trainer.global_step
        if self._stepped_at == step:  # a second optimizer in the same step: recorded once
            return
        self._stepped_at = step
        # Lightning runs this hook inside optimizer.step(closure); the monitor takes the
        # weight snapshot for update_ratio when it records, so that step is measured too.
        if len(trainer.optimizers) > 1:  # manual optimization may step each after one backward: by design
            self.monitor._forget_gradients()
        self._recorded = self.monitor.step(step=step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.monitor is None or self.monitor.closed:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()
            self._loss = loss if self._loss is None else self._loss + loss
        if self._stepped_at is not None:  # this batch ended an optimizer step
            if self._recorded and self._loss is not None:
                self.monitor.log({"loss": self._loss}, step=self._stepped_at)
            self._loss = None
            self._stepped_at = None
            self._recorded = False

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.monitor is not None:
            status, error = end_status(exception)  # Ctrl-C: interrupted; anything else: failed
            self.monitor.close(status=status, error=error)

    # -- loggers ----------------------------------------------------------------------
    def _to_loggers(self, step: int, keys: list[Key], values: np.ndarray) -> None:
        trainer = self._trainer
        if trainer is None or not trainer.loggers:
            return
        picked = select(keys, self.log_levels, self.log_stats)
        metrics = {"gradsight/" + scalar_tag(*keys[i]): float(values[i]) for i in picked if keys[i][0] != "metric"}
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
