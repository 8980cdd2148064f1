"""Hugging Face: ``GradFlowCallback`` records gradient statistics in ``transformers.Trainer``.

::

    from gradsight.integrations.huggingface import GradFlowCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds)
    GradFlowCallback.attach(trainer, every=10)      # store: <args.output_dir>/gradsight
    trainer.train()

Statistics are recorded in ``on_pre_optimizer_step``: once per optimizer step, with
the gradients of every micro-batch of ``gradient_accumulation_steps`` added in,
unscaled (fp16: Accelerate's ``GradScaler`` is passed to the monitor, which divides
the scale out unless the gradients were already unscaled; the scale is recorded as
``loss_scale``), and all-reduced under DDP. The step index is the optimizer step
(``state.global_step`` before it is incremented).

The ``Trainer`` clips gradients *before* this hook (``max_grad_norm``, 1.0 by
default), and no callback event comes earlier: with clipping on, the recorded
gradients are the clipped ones the optimizer applies, and the pre-clip total norm is
the ``grad_norm`` the ``Trainer`` logs (recorded here as the metric ``grad_norm``).
Set ``max_grad_norm=0`` to record unclipped gradients. The run's config keeps
``max_grad_norm`` so readers can tell.

Logging: at every ``Trainer`` log event the latest model- (and optionally layer-)
level statistics are added to the logs as ``gradsight/model/grad_norm`` and so on,
so ``report_to`` integrations (TensorBoard, W&B, ...) receive them. That needs the
callback to run before those integrations, which :meth:`GradFlowCallback.attach`
arranges; passed as ``Trainer(callbacks=[...])`` it still records everything to the
store. The ``Trainer``'s own logs (``loss``, ``learning_rate``, ``grad_norm``) are
stored as metrics.

Needs ``transformers`` and ``accelerate``: ``pip install "gradsight[huggingface]"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError(
        "gradsight.integrations.huggingface needs transformers: pip install 'gradsight[huggingface]'"
    ) from None

import gradsight.schedules as schedules
from gradsight.instrument.monitor import Monitor, watch
from gradsight.integrations._tap import Key, scalar_tag, select

__all__ = ["GradFlowCallback"]

#: Prefix of the keys added to the Trainer's logs.
LOG_PREFIX = "gradsight/"


class GradFlowCallback(TrainerCallback):
    """Records gradient statistics of the ``Trainer``'s model into a gradsight run.

    Args:
        run_dir: run directory (default ``<args.output_dir>/gradsight``).
        every: record every k-th optimizer step, or a schedule (``step -> bool``).
        log_levels: levels added to the Trainer's logs (``()`` for none).
        log_stats: statistics added to the logs (default: all).
        **watch_kwargs: passed to :func:`gradsight.watch` (``config``, ``name``,
            ``backend``, ``overwrite``, ``distributed``, ...). The optimizer and any
            ``GradScaler`` are taken from the Trainer.

    After training, :attr:`monitor` is the closed monitor and :attr:`run_dir` the run.
    """

    def __init__(
        self,
        run_dir: str | Path | None = None,
        *,
        every: int | schedules.Schedule = 1,
        log_levels: Sequence[str] = ("model",),
        log_stats: Sequence[str] | None = None,
        **watch_kwargs: Any,
    ) -> None:
        for taken in ("optimizer", "scaler"):
            if taken in watch_kwargs:
                raise TypeError(f"GradFlowCallback takes {taken} from the Trainer; do not pass {taken}=")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.every = every
        self.log_levels = tuple(log_levels)
        self.log_stats = tuple(log_stats) if log_stats is not None else None
        self.watch_kwargs = watch_kwargs
        self.monitor: Monitor | None = None
        self._latest: dict[str, float] = {}

    @classmethod
    def attach(cls, trainer: Any, run_dir: str | Path | None = None, **kwargs: Any) -> GradFlowCallback:
        """Create the callback and put it first among ``trainer``'s callbacks, so the
        statistics it adds to each log event reach the ``report_to`` integrations."""
        callback = cls(run_dir, **kwargs)
        trainer.callback_handler.callbacks.insert(0, callback)
        return callback

    # -- lifecycle --------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        if self.monitor is not None and not self.monitor.closed:
            return
        if model is None:
            raise RuntimeError("GradFlowCallback: the Trainer passed no model to on_train_begin")
        if self.run_dir is None:
            self.run_dir = Path(args.output_dir) / "gradsight"
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
        config = {
            "huggingface": {
                "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "max_grad_norm": args.max_grad_norm,
                "fp16": bool(args.fp16),
                "bf16": bool(args.bf16),
                "world_size": args.world_size,
                "learning_rate": args.learning_rate,
            },
            **(self.watch_kwargs.get("config") or {}),
        }
        kwargs_ = {k: v for k, v in self.watch_kwargs.items() if k != "config"}
        self.monitor = watch(
            model,
            self.run_dir,
            every=self.every,
            optimizer=inner,
            scaler=getattr(optimizer, "scaler", None),
            config=config,
            **kwargs_,
        )
        self._latest = {}
        if self.log_levels:
            self.monitor.add_listener(self._keep_latest)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None and not self.monitor.closed:
            self.monitor.step(step=state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs is None:
            return
        if self.monitor is not None and not self.monitor.closed and state.global_step > 0:
            metrics = {
                k: float(v) for k, v in logs.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith(LOG_PREFIX)
            }
            if metrics:
                self.monitor.log(metrics, step=state.global_step - 1)
        logs.update(self._latest)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()

    # -- logs ---------------------------------------------------------------------------
    def _keep_latest(self, step: int, keys: list[Key], values: np.ndarray) -> None:
        for i in select(keys, self.log_levels, self.log_stats):
            if keys[i][0] != "metric":
                self._latest[LOG_PREFIX + scalar_tag(*keys[i])] = float(values[i])
