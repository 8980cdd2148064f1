"""Hugging Face: ``GradFlowCallback`` records gradient statistics in ``transformers.Trainer``.

::

    from gradsight.integrations.huggingface import GradFlowCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds)
    GradFlowCallback.attach(trainer, every=10)      # store: <args.output_dir>/gradsight
    trainer.train()

Statistics are recorded once per optimizer step, with the gradients of every
micro-batch of ``gradient_accumulation_steps`` added in, unscaled (fp16: Accelerate's
``GradScaler`` is passed to the monitor, which divides the scale out unless the
gradients were already unscaled; the scale is recorded as ``loss_scale``), and
all-reduced under DDP. The step index is the optimizer step (``state.global_step``
before it is incremented).

Clipping: the ``Trainer`` clips gradients (``max_grad_norm``, 1.0 by default) through
``trainer.accelerator.clip_grad_norm_`` after the last backward pass of a step, and
no callback event comes between the two. A callback added with
:meth:`GradFlowCallback.attach` knows the trainer: for the duration of ``train()`` it
wraps that accelerator's ``clip_grad_norm_`` so the gradients are recorded just
before they are clipped (the wrapper is removed at ``on_train_end``). A callback
passed as ``Trainer(callbacks=[...])`` does not know the trainer and records in
``on_pre_optimizer_step``, after clipping. Either way the run's config says which:
``config["grad_clip"] = {"post_clip": bool, "max_norm": float or None}`` (``max_norm``
None when clipping is off). The ``Trainer``'s own pre-clip total norm is stored as
the metric ``grad_norm``.

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

import logging
import weakref
from collections.abc import Callable, Sequence
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
from gradsight.instrument.options import check_options, watch_arguments
from gradsight.integrations._tap import Key, scalar_tag, select

__all__ = ["GradFlowCallback"]

#: Prefix of the keys added to the Trainer's logs.
LOG_PREFIX = "gradsight/"

log = logging.getLogger(__name__)


class GradFlowCallback(TrainerCallback):
    """Records gradient statistics of the ``Trainer``'s model into a gradsight run.

    Args:
        run_dir: run directory (default ``<args.output_dir>/gradsight``).
        every: record every k-th optimizer step, or a schedule (``step -> bool``).
        log_levels: levels added to the Trainer's logs (``()`` for none).
        log_stats: statistics added to the logs (default: all).
        **watch_kwargs: passed to :func:`gradsight.watch` (``config``, ``name``,
            ``backend``, ``overwrite``, ``distributed``, ``update_ratio``, ...). The optimizer and any
            ``GradScaler`` are taken from the Trainer.

    Create it with :meth:`attach` to record gradients before the ``Trainer`` clips
    them. After training, :attr:`monitor` is the closed monitor and :attr:`run_dir`
    the run.
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
        check_options(watch_kwargs, "GradFlowCallback", taken=("optimizer", "scaler"), source="from the Trainer")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.every = every
        self.log_levels = tuple(log_levels)
        self.log_stats = tuple(log_stats) if log_stats is not None else None
        self.watch_kwargs = watch_kwargs
        self.monitor: Monitor | None = None
        self._latest: dict[str, float] = {}
        self._trainer: weakref.ref | None = None
        self._state: Any = None
        self._config: dict[str, Any] = {}
        self._recorded_step: int | None = None  # the optimizer step already recorded
        self._unwrap_clip: Callable[[], None] | None = None

    @classmethod
    def attach(cls, trainer: Any, run_dir: str | Path | None = None, **kwargs: Any) -> GradFlowCallback:
        """Create the callback and put it first among ``trainer``'s callbacks, so the
        statistics it adds to each log event reach the ``report_to`` integrations, and
        so it can record the gradients before the trainer clips them."""
        callback = cls(run_dir, **kwargs)
        callback._trainer = weakref.ref(trainer)
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
        self._state = state
        self._recorded_step = None
        trainer = self._trainer() if self._trainer is not None else None
        accelerator = getattr(trainer, "accelerator", None)
        if accelerator is None and _clips(args.max_grad_norm):
            log.warning("GradFlowCallback records gradients after the Trainer clipped them (max_grad_norm=%s); "
                        "add it with GradFlowCallback.attach(trainer) to record them before clipping",
                        args.max_grad_norm)
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
        self._config = {
            "huggingface": {
                "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "max_grad_norm": args.max_grad_norm,
                "fp16": bool(args.fp16),
                "bf16": bool(args.bf16),
                "world_size": args.world_size,
                "learning_rate": args.learning_rate,
            },
            "grad_clip": _grad_clip(args.max_grad_norm, post_clip=accelerator is None),
        }
        arguments = watch_arguments(self.watch_kwargs, "GradFlowCallback", every=self.every, optimizer=inner,
                                    scaler=getattr(optimizer, "scaler", None), config=self._config)
        self._config = arguments["config"]
        self.monitor = watch(model, self.run_dir, **arguments)
        self._latest = {}
        if self.log_levels:
            self.monitor.add_listener(self._keep_latest)
        if accelerator is not None:
            self._unwrap_clip = _wrap_clip(accelerator, self._record_before_clip)

    def _record(self, step: int) -> bool:
        """Call the monitor's ``step`` for optimizer step ``step`` unless this was done
        already (or the monitor is closed); True when it was called now."""
        if self.monitor is None or self.monitor.closed or self._recorded_step == step:
            return False
        self._recorded_step = step
        self.monitor.step(step=step)
        return True

    def _record_before_clip(self) -> None:
        if self._state is not None:
            self._record(self._state.global_step)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Reached unrecorded when the trainer clipped without the accelerator's
        # clip_grad_norm_ (or did not clip): then these are the gradients it applies.
        clip = self._config.get("grad_clip", {})
        if self._record(state.global_step) and clip.get("max_norm") is not None and clip.get("post_clip") is False:
            self._config["grad_clip"] = _grad_clip(args.max_grad_norm, post_clip=True)
            self.monitor.set_meta(config=self._config)

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
        if self._unwrap_clip is not None:
            self._unwrap_clip()
            self._unwrap_clip = None
        if self.monitor is not None:
            self.monitor.close()

    # -- logs ---------------------------------------------------------------------------
    def _keep_latest(self, step: int, keys: list[Key], values: np.ndarray) -> None:
        for i in select(keys, self.log_levels, self.log_stats):
            if keys[i][0] != "metric":
                self._latest[LOG_PREFIX + scalar_tag(*keys[i])] = float(values[i])


def _clips(max_grad_norm: float | None) -> bool:
    """Whether the ``Trainer`` clips gradients with this ``max_grad_norm``."""
    return max_grad_norm is not None and max_grad_norm > 0


def _grad_clip(max_grad_norm: float | None, *, post_clip: bool) -> dict[str, Any]:
    """The run's ``config["grad_clip"]``: whether the recorded gradients were clipped, and the threshold."""
    clipping = _clips(max_grad_norm)
    return {"post_clip": post_clip and clipping, "max_norm": float(max_grad_norm) if clipping else None}


def _wrap_clip(accelerator: Any, before: Callable[[], None]) -> Callable[[], None]:
    """Make ``accelerator.clip_grad_norm_`` call ``before()`` first; returns the undo.

    The wrapper is an attribute of this accelerator only, and the undo puts back
    whatever the attribute was (the class's method, or another wrapper).
    """
    had_own = "clip_grad_norm_" in vars(accelerator)
    previous = accelerator.clip_grad_norm_

    def clip_grad_norm_(*args: Any, **kwargs: Any) -> Any:
        before()
        return previous(*args, **kwargs)

    accelerator.clip_grad_norm_ = clip_grad_norm_

    def undo() -> None:
        if vars(accelerator).get("clip_grad_norm_") is not clip_grad_norm_:
            return  # wrapped again since; leave that alone
        if had_own:
            accelerator.clip_grad_norm_ = previous
        else:
            del accelerator.clip_grad_norm_

    return undo
