"""One training/evaluation loop, monitored with :func:`gradsight.watch` throughout.

    >>> data = gs.data.load_dataset("mnist5k")
    >>> result = gs.train.train("resnet", data, "lecture", depth=20, epochs=2, run_dir="runs/r20")
    >>> result.final.test_accuracy

The loop is the bare PyTorch loop (forward, cross-entropy, backward, optimizer step) plus:
``monitor.step(loss)`` after backward, a per-step learning-rate schedule, running sums of the
training loss and of correct predictions kept on the device (no host sync per batch), an
evaluation on the test set after every epoch, and a progress bar. Batches are in-memory
(:func:`gradsight.data.batches`); their order comes from a ``torch.Generator`` seeded with
``seed``, so every model trained with the same seed sees the same batches in the same order.

What the run store holds (``gs.open_run(run_dir)``):

- gradient statistics at the steps ``every`` picks (``"auto"``: the first 10 steps, then about
  100 more spread evenly), with the loss and, with an optimizer, the update ratio;
- per epoch, at the epoch's last step (``Run.metrics()``): ``epoch``, ``lr``, ``train_loss``,
  ``train_error``, ``test_loss``, ``test_error``, ``test_accuracy``, ``epoch_time_s``;
- in ``meta``: ``config`` (model, recipe, seed, epochs, dataset, device, and from the model
  registry ``family``, ``depth``, ``input_kind`` and ``input_shape``, ``None`` for a module the
  registry did not build), and ``network``, ``layers``, ``parameters``, ``dataset``, ``recipe``,
  ``seed``, ``epochs``, ``wall_time_s``.

What differs between image classification and a language model on a byte-level corpus
(:class:`gradsight.data.TextSplits`: windows of ``context`` bytes, ``context=``, else the recipe's,
else ``DEFAULT_CONTEXT``) is a task object (:mod:`gradsight.train.tasks`): how the model is sized,
the batches of an epoch, the test set, and what the config and the metrics add (for a language
model ``train_bits_per_byte`` / ``test_bits_per_byte``, and ``context``, ``vocab_size``,
``test_windows`` and ``text`` in the config); the loop below is the same for both.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import gradsight.schedules as schedules
from gradsight.data import DatasetSplits, TextSplits
from gradsight.instrument import monitor as monitor_module
from gradsight.instrument.options import watch_arguments
from gradsight.models import info_of
from gradsight.train.recipes import Recipe, get_recipe
from gradsight.train.tasks import Task, evaluate, task_for

__all__ = ["EpochMetrics", "TrainResult", "auto_schedule", "build_for_data", "build_model", "evaluate",
           "resolve_device", "train"]

DEVICES = ("auto", "cpu", "cuda")
#: "auto" records every one of the first AUTO_FIRST steps, then about AUTO_TARGET more.
AUTO_FIRST = 10
AUTO_TARGET = 100
#: The ``gs.watch`` options that :func:`train` sets itself (``watch=`` may not name them).
RUNNER_SETS = ("every", "optimizer", "name", "overwrite")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; ``"cuda"`` without CUDA -> ``ValueError``."""
    if isinstance(device, torch.device):
        return device
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available; use --device cpu or auto")
    return torch.device(device)


def auto_schedule(total_steps: int, first: int = AUTO_FIRST, target: int = AUTO_TARGET) -> schedules.Schedule:
    """Record the first ``first`` steps (initialization and the early transient), then every
    k-th step so that about ``target`` more are recorded over ``total_steps``.

    Keeps a store to a few MB whatever the length of training: a ResNet-56 writes about
    2,300 values per recorded step.
    """
    k = max(1, math.ceil(max(total_steps - first, 0) / target))
    return schedules.first_then_every(first, k)


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch measured. Errors and accuracy are fractions in [0, 1].

    ``train_loss``/``train_error`` average over the epoch's mini-batches as they were trained
    (model in training mode, weights changing during the epoch), like the training curves of
    He et al. 2016; ``test_*`` evaluate the model at the end of the epoch, in eval mode.
    """

    epoch: int  # 1-based
    step: int  # index of the epoch's last optimizer step (0-based); metrics are logged there
    lr: float  # learning rate of the epoch's last step
    train_loss: float
    train_error: float
    test_loss: float
    test_error: float
    test_accuracy: float
    time_s: float  # wall time of the epoch, evaluation included
    # Language models: loss / ln 2 (nats per byte to bits per byte); None for classifiers.
    train_bits_per_byte: float | None = None
    test_bits_per_byte: float | None = None


@dataclass
class TrainResult:
    """The outcome of :func:`train`: per-epoch metrics, size and time of the run."""

    name: str
    network: str  # model family or registered name, e.g. "plain", "resnet"
    depth: int | None  # weighted layers (the results table's "layers" column) when known
    parameters: int  # trainable parameters
    dataset: str
    recipe: str
    seed: int
    device: str
    steps: int  # optimizer steps taken
    wall_time_s: float  # whole run: training, evaluation and recording
    run_dir: Path
    epochs: list[EpochMetrics] = field(default_factory=list)
    task: str = "classification"  # or "next-token" (a language model on a byte-level corpus)

    @property
    def layers(self) -> int | None:
        """Deprecated: :attr:`depth` (the number of weighted layers)."""
        warnings.warn("TrainResult.layers is deprecated; use TrainResult.depth (the number of weighted layers)",
                      DeprecationWarning, stacklevel=2)
        return self.depth

    @property
    def final(self) -> EpochMetrics:
        """The last epoch's metrics."""
        return self.epochs[-1]

    def row(self) -> dict[str, Any]:
        """One row of a results table: network, layers, parameters, final errors and accuracy, time;
        for a language model the final train and test loss and the test bits per byte instead."""
        last = self.final
        if self.task == "next-token":
            scores = {"train_loss": last.train_loss, "test_loss": last.test_loss,
                      "test_bits_per_byte": last.test_bits_per_byte}
        else:
            scores = {"train_error": last.train_error, "test_error": last.test_error,
                      "test_accuracy": last.test_accuracy}
        return {"network": self.network, "layers": self.depth, "parameters": self.parameters, **scores,
                "time_s": self.wall_time_s}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


def build_for_data(name: str, data: DatasetSplits | TextSplits, *, seed: int = 0, context: int | None = None,
                   **model_kwargs: Any) -> nn.Module:
    """``create_model(name, ...)`` sized for ``data``, with weights drawn after ``torch.manual_seed(seed)``.

    What the model takes comes from its registration (:func:`gradsight.models.model_info`):
    image models get ``in_channels``, vector models ``in_features`` from ``data.input_shape``;
    every model gets ``num_classes``. On a byte-level corpus the model gets ``context``
    (default ``DEFAULT_CONTEXT``) and ``vocab_size`` (256) instead. Explicit ``model_kwargs``
    win. The model's :class:`~gradsight.models.ModelInfo` is ``model.model_info``.
    """
    return task_for(data, context).build_model(name, seed=seed, **model_kwargs)


def build_model(name: str, data: DatasetSplits | TextSplits, **kwargs: Any) -> nn.Module:
    """Deprecated: :func:`build_for_data` (``gs.models.build_model`` builds from a model spec alone)."""
    warnings.warn("gradsight.train.build_model is deprecated; use gradsight.train.build_for_data",
                  DeprecationWarning, stacklevel=2)
    return build_for_data(name, data, **kwargs)


def train(
    model: nn.Module | str,
    data: DatasetSplits | TextSplits,
    recipe: Recipe | str = "lecture",
    *,
    epochs: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    run_dir: str | Path | None = None,
    every: int | schedules.Schedule | str = "auto",
    activations: bool | str = False,
    histograms: bool | int = False,
    update_ratio: bool | int = True,
    watch: Mapping[str, Any] | None = None,
    name: str | None = None,
    network: str | None = None,
    layers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    config: dict[str, Any] | None = None,
    context: int | None = None,
    **model_kwargs: Any,
) -> TrainResult:
    """Train ``model`` on ``data`` with ``recipe``, evaluating on the test split after every epoch.

    Args:
        model: a module, or a registered model name built with :func:`build_for_data`
            (``model_kwargs``, e.g. ``depth=56``, go to its factory; the seed is applied first).
        data: in-memory splits from :func:`gradsight.data.load_dataset`: images, or a byte-level
            corpus for a language model (see the module docstring).
        recipe: a :class:`Recipe` or its name (``"lecture"``, ``"he2016"``, ``"gpt"``).
        epochs: number of epochs (default: the recipe's).
        seed: seeds ``torch`` (and the model's weights when ``model`` is a name) and the
            generator of the data order. The same seed gives the same numbers on the CPU.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``; model and data move there.
        run_dir: the run store's directory (default: the monitor's ``runs/<time>-<Model>``).
        every: which steps record gradient statistics: ``"auto"`` (see :func:`auto_schedule`),
            every k-th step, or a schedule ``step -> bool``.
        activations, histograms, update_ratio: :func:`gradsight.watch`'s options of these names
            (``update_ratio=True``, unlike ``gs.watch``'s 10: every recorded step of the sparse
            ``"auto"`` schedule has one); ``watch=`` entries win over them.
        watch: more :func:`gradsight.watch` options, passed through (``weights``, ``backend``,
            ``residual_blocks``, ...; a ``config`` is added to the run's config). The runner sets
            ``every``, ``optimizer``, ``name`` and ``overwrite`` itself.
        name: display name of the run (default: the run directory's name).
        network, layers: how tables name the model (default: the model name, else its registered
            family, else its class; and its registered depth).
        progress: show a progress bar per epoch (loss and accuracy so far; test accuracy at the end).
        overwrite: replace an existing run in ``run_dir``.
        config: extra JSON-serializable settings stored in the run's config.
        context: window length on a byte-level corpus (default: the recipe's, else
            ``DEFAULT_CONTEXT``); a model built here gets it as its ``context``.

    Returns:
        A :class:`TrainResult`; the same numbers are in the run store.
    """
    recipe = get_recipe(recipe)
    epochs = recipe.epochs if epochs is None else int(epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    dev = resolve_device(device)
    task = task_for(data, context or recipe.context)
    task.load(dev)
    model_name = model if isinstance(model, str) else None
    if isinstance(model, str):
        model = task.build_model(model, seed=seed, **model_kwargs)
    elif model_kwargs:
        raise TypeError(f"model keywords {sorted(model_kwargs)} need a model name, not a module")
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)  # on the CPU: the same order on every device
    model.to(dev)
    steps_per_epoch = recipe.steps_per_epoch(data.num_train)
    total_steps = steps_per_epoch * epochs
    optimizer = recipe.make_optimizer(model.parameters())
    scheduler = recipe.make_scheduler(optimizer, total_steps)

    info = info_of(model)
    family = info.family if info else network
    network = network or model_name or (info.family if info else type(model).__name__)
    depth = layers if layers is not None else (info.depth if info else None)
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    settings = {
        "model": model_name or (info.name if info else f"{type(model).__module__}.{type(model).__qualname__}"),
        "model_kwargs": model_kwargs,
        "network": network,
        "layers": depth,
        "family": family,
        "depth": info.depth if info else depth,
        "input_kind": info.input_kind if info else task.input_kind,
        "input_shape": list(task.input_shape),
        "recipe": recipe.to_dict(),
        "epochs": epochs,
        "seed": seed,
        "dataset": data.name,
        "num_train": data.num_train,
        "num_test": data.num_test,
        "device": str(dev),
        "steps_per_epoch": steps_per_epoch,
        **task.config(),
        **(config or {}),
    }
    monitor = monitor_module.watch(model, run_dir, **watch_arguments(
        watch, "gs.train.train", defaults={"activations": activations, "histograms": histograms,
                                           "update_ratio": update_ratio},
        every=auto_schedule(total_steps) if every == "auto" else every, optimizer=optimizer, config=settings,
        name=name, overwrite=overwrite))
    result = TrainResult(
        name=name or monitor.run_dir.name, network=network, depth=depth, parameters=parameters,
        dataset=data.name, recipe=recipe.name, seed=seed, device=str(dev), steps=0, wall_time_s=0.0,
        run_dir=monitor.run_dir, task=task.name,
    )
    monitor.set_meta(network=network, layers=depth, parameters=parameters, dataset=data.name,
                     recipe=recipe.name, seed=seed, epochs=epochs)
    loop = _Loop(model=model, task=task, recipe=recipe, optimizer=optimizer, scheduler=scheduler, monitor=monitor,
                 order=order, steps_per_epoch=steps_per_epoch, total_steps=total_steps, device=dev, progress=progress)
    start = time.perf_counter()
    with monitor:
        model.train()
        for epoch in range(1, epochs + 1):
            result.epochs.append(loop.epoch(epoch, f"{result.name} {epoch}/{epochs}"))
        result.steps = loop.step
        result.wall_time_s = time.perf_counter() - start
        monitor.set_meta(wall_time_s=result.wall_time_s, steps=loop.step)
    return result


@dataclass
class _Loop:
    """One training run's loop: what it steps through, and the optimizer steps taken (``step``)."""

    model: nn.Module
    task: Task
    recipe: Recipe
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    monitor: monitor_module.Monitor
    order: torch.Generator
    steps_per_epoch: int
    total_steps: int
    device: torch.device
    progress: bool
    step: int = 0

    def epoch(self, epoch: int, desc: str) -> EpochMetrics:
        """Train one epoch, evaluate, log the epoch's metrics at its last step and return them."""
        start = time.perf_counter()
        bar = tqdm(total=self.steps_per_epoch, desc=desc, unit="batch", disable=not self.progress, leave=True,
                   dynamic_ncols=True)
        train_loss, train_error = self._train(bar)
        lr = self.recipe.lr_at(self.step - 1, self.total_steps)
        test_loss, test_error = self.task.evaluate(self.model)
        extra = self.task.epoch_metrics(train_loss, test_loss)
        metrics = EpochMetrics(
            epoch=epoch, step=self.step - 1, lr=lr, train_loss=train_loss, train_error=train_error,
            test_loss=test_loss, test_error=test_error, test_accuracy=1.0 - test_error,
            time_s=time.perf_counter() - start, **extra,
        )
        logged = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_error": train_error,
                  "test_loss": test_loss, "test_error": test_error, "test_accuracy": metrics.test_accuracy,
                  **extra, "epoch_time_s": metrics.time_s}
        self.monitor.log(logged, step=self.step - 1)
        if self.progress:
            bar.set_postfix(**self.task.postfix(logged), refresh=False)
        bar.close()
        return metrics

    def _train(self, bar: tqdm) -> tuple[float, float]:
        """The epoch's training steps; the mean training loss and error over its batches.

        Running sums stay on the device (no host sync per batch but the progress bar's, at
        most twice a second)."""
        model, optimizer, recipe = self.model, self.optimizer, self.recipe
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        last_shown = 0.0
        for xb, yb in self.task.epoch(recipe.batch_size, self.steps_per_epoch, self.order):
            logits = model(xb)
            # Classifier: logits [B, classes]; language model: [B, T, vocab], every position.
            loss = F.cross_entropy(logits.flatten(0, -2), yb.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.monitor.step(loss)
            if recipe.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            self.scheduler.step()
            with torch.no_grad():
                loss_sum += loss.detach().double() * yb.numel()
                correct += (logits.argmax(-1) == yb).sum()
            seen += yb.numel()
            self.step += 1
            if self.progress:
                bar.update()
                now = time.monotonic()
                if now - last_shown > 0.5:
                    last_shown = now
                    bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", acc=f"{int(correct) / seen:.4f}",
                                    refresh=False)
        return float(loss_sum) / seen, 1.0 - int(correct) / seen
