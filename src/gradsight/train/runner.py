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

On a byte-level corpus (:class:`gradsight.data.TextSplits`) the model is a language model: it
takes windows of ``context`` bytes (``context=``, else the recipe's, else ``DEFAULT_CONTEXT``) and
is built with ``context`` and ``vocab_size=256``. Each step trains on ``batch_size`` windows at
random offsets of the training stream (:func:`gradsight.data.token_batch`, offsets from the seeded
generator); an epoch is the recipe's ``batches_per_epoch`` steps. The loss is next-token
cross-entropy averaged over every position of every window; the test loss is the same on a fixed
set of up to ``TEST_WINDOWS`` evenly spaced windows of the test stream
(:func:`gradsight.data.fixed_windows`). Errors are next-byte errors (the most likely byte is not
the next one), and ``train_bits_per_byte`` / ``test_bits_per_byte`` are the losses divided by ln 2
(tokens are bytes). The config adds ``context``, ``vocab_size`` and ``text`` (the corpus: bytes and
files per split, the Python version of ``pystdlib``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import gradsight.schedules as schedules
from gradsight.data import DatasetSplits, TextSplits, batches, fixed_windows, token_batch
from gradsight.instrument.monitor import watch
from gradsight.models import info_of
from gradsight.models.spec import build_model as build_from_spec
from gradsight.train.recipes import Recipe, get_recipe

__all__ = ["EpochMetrics", "TrainResult", "auto_schedule", "build_model", "evaluate", "resolve_device", "train"]

DEVICES = ("auto", "cpu", "cuda")
EVAL_BATCH_SIZE = 1000
#: Token data: windows per evaluation batch, windows of the test loss, context without one given.
EVAL_WINDOWS_BATCH = 64
TEST_WINDOWS = 256
DEFAULT_CONTEXT = 64
#: "auto" records every one of the first AUTO_FIRST steps, then about AUTO_TARGET more.
AUTO_FIRST = 10
AUTO_TARGET = 100


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
    layers: int | None  # depth (weighted layers) when known
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
    def final(self) -> EpochMetrics:
        """The last epoch's metrics."""
        return self.epochs[-1]

    def row(self) -> dict[str, Any]:
        """One row of a results table: network, layers, parameters, final errors and accuracy, time;
        for a language model the final train and test loss and the test bits per byte instead."""
        last = self.final
        if self.task == "next-token":
            return {
                "network": self.network,
                "layers": self.layers,
                "parameters": self.parameters,
                "train_loss": last.train_loss,
                "test_loss": last.test_loss,
                "test_bits_per_byte": last.test_bits_per_byte,
                "time_s": self.wall_time_s,
            }
        return {
            "network": self.network,
            "layers": self.layers,
            "parameters": self.parameters,
            "train_error": last.train_error,
            "test_error": last.test_error,
            "test_accuracy": last.test_accuracy,
            "time_s": self.wall_time_s,
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


def build_model(name: str, data: DatasetSplits | TextSplits, *, seed: int = 0, context: int | None = None,
                **model_kwargs: Any) -> nn.Module:
    """``create_model(name, ...)`` sized for ``data``, with weights drawn after ``torch.manual_seed(seed)``.

    What the model takes comes from its registration (:func:`gradsight.models.model_info`):
    image models get ``in_channels``, vector models ``in_features`` from ``data.input_shape``;
    every model gets ``num_classes``. On a byte-level corpus the model gets ``context``
    (default ``DEFAULT_CONTEXT``) and ``vocab_size`` (256) instead. Explicit ``model_kwargs``
    win. The model's :class:`~gradsight.models.ModelInfo` is ``model.model_info``.
    """
    torch.manual_seed(seed)
    if isinstance(data, TextSplits):
        context = DEFAULT_CONTEXT if context is None else context
        kwargs: dict[str, Any] = {"context": context, "vocab_size": data.vocab_size, **model_kwargs}
        return build_from_spec(name, input_shape=(context,), **kwargs)[0]
    kwargs = {"num_classes": data.num_classes, **model_kwargs}
    return build_from_spec(name, input_shape=data.input_shape, **kwargs)[0]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> tuple[float, float]:
    """(mean cross-entropy, error fraction) of ``model`` in eval mode on ``x`` [N, ...], ``y`` [N].

    For a language model, ``x`` and ``y`` are input and target windows (int64 [N, context]): the
    mean is over every position of every window (nats per token), the error the fraction of
    positions whose most likely next token is not the target. Restores the model's training
    mode afterwards.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    wrong = torch.zeros((), device=x.device, dtype=torch.long)
    for xb, yb in batches(x, y, batch_size, shuffle=False):
        logits = model(xb)
        loss_sum += F.cross_entropy(logits.flatten(0, -2), yb.flatten(), reduction="sum").double()
        wrong += (logits.argmax(-1) != yb).sum()
    model.train(was_training)
    n = max(int(y.numel()), 1)
    return float(loss_sum) / n, int(wrong) / n


def train(
    model: nn.Module | str,
    data: DatasetSplits,
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
        model: a module, or a registered model name built with :func:`build_model`
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
        activations: passed to :func:`gradsight.watch` (activation and residual-split statistics).
        histograms: passed to :func:`gradsight.watch` (log2 gradient histograms and precision headroom).
        update_ratio: passed to :func:`gradsight.watch`; ``True`` (the default here, unlike
            ``gs.watch``'s 10): every recorded step of the sparse ``"auto"`` schedule has one.
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
    text = isinstance(data, TextSplits)
    if text:
        context = context or recipe.context or DEFAULT_CONTEXT
        train_stream, test_stream = data.train.to(dev), data.test.to(dev)
        try:
            test_x, test_y = fixed_windows(test_stream, context, TEST_WINDOWS)
            fixed_windows(train_stream, context, 1)  # the training stream is long enough too
        except ValueError as exc:
            raise ValueError(f"dataset {data.name!r}: {exc}") from None
    model_name = model if isinstance(model, str) else None
    if isinstance(model, str):
        model = build_model(model, data, seed=seed, context=context if text else None, **model_kwargs)
    elif model_kwargs:
        raise TypeError(f"model keywords {sorted(model_kwargs)} need a model name, not a module")
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)  # on the CPU: the same order on every device

    model.to(dev)
    if not text:
        train_x, train_y = data.train_x.to(dev), data.train_y.to(dev)
        test_x, test_y = data.test_x.to(dev), data.test_y.to(dev)
    steps_per_epoch = recipe.steps_per_epoch(data.num_train)
    total_steps = steps_per_epoch * epochs
    schedule = auto_schedule(total_steps) if every == "auto" else every
    optimizer = recipe.make_optimizer(model.parameters())
    scheduler = recipe.make_scheduler(optimizer, total_steps)

    info = info_of(model)
    family = info.family if info else network
    network = network or model_name or (info.family if info else type(model).__name__)
    layers = layers if layers is not None else (info.depth if info else None)
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    settings = {
        "model": model_name or (info.name if info else f"{type(model).__module__}.{type(model).__qualname__}"),
        "model_kwargs": model_kwargs,
        "network": network,
        "layers": layers,
        "family": family,
        "depth": info.depth if info else layers,
        "input_kind": info.input_kind if info else ("tokens" if text else None),
        "input_shape": [context] if text else list(data.input_shape),
        "recipe": recipe.to_dict(),
        "epochs": epochs,
        "seed": seed,
        "dataset": data.name,
        "num_train": data.num_train,
        "num_test": data.num_test,
        "device": str(dev),
        "steps_per_epoch": steps_per_epoch,
        **({"context": context, "vocab_size": data.vocab_size, "test_windows": int(test_x.shape[0]),
            "text": data.config()} if text else {}),
        **(config or {}),
    }
    monitor = watch(
        model, run_dir, every=schedule, optimizer=optimizer, config=settings, name=name,
        overwrite=overwrite, activations=activations, histograms=histograms,
        update_ratio=update_ratio,
    )
    result = TrainResult(
        name=name or monitor.run_dir.name, network=network, layers=layers, parameters=parameters,
        dataset=data.name, recipe=recipe.name, seed=seed, device=str(dev), steps=0, wall_time_s=0.0,
        run_dir=monitor.run_dir, task="next-token" if text else "classification",
    )
    monitor.set_meta(network=network, layers=layers, parameters=parameters, dataset=data.name,
                     recipe=recipe.name, seed=seed, epochs=epochs)

    start = time.perf_counter()
    step = 0
    with monitor:
        model.train()
        for epoch in range(1, epochs + 1):
            epoch_start = time.perf_counter()
            loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
            correct = torch.zeros((), device=dev, dtype=torch.long)
            seen = 0
            bar = tqdm(total=steps_per_epoch, desc=f"{result.name} {epoch}/{epochs}", unit="batch",
                       disable=not progress, leave=True, dynamic_ncols=True)
            last_shown = 0.0
            if text:
                data_order = (token_batch(train_stream, context, recipe.batch_size, generator=order)
                              for _ in range(steps_per_epoch))
            else:
                data_order = batches(train_x, train_y, recipe.batch_size, shuffle=True, generator=order)
            for xb, yb in data_order:
                logits = model(xb)
                # Classifier: logits [B, classes]; language model: [B, T, vocab], every position.
                loss = F.cross_entropy(logits.flatten(0, -2), yb.flatten())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                monitor.step(loss)
                if recipe.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    loss_sum += loss.detach().double() * yb.numel()
                    correct += (logits.argmax(-1) == yb).sum()
                seen += yb.numel()
                step += 1
                if progress:
                    bar.update()
                    now = time.monotonic()
                    if now - last_shown > 0.5:  # a host sync, so at most twice a second
                        last_shown = now
                        bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", acc=f"{int(correct) / seen:.4f}",
                                        refresh=False)
            lr = recipe.lr_at(step - 1, total_steps)
            train_loss, train_error = float(loss_sum) / seen, 1.0 - int(correct) / seen
            test_loss, test_error = evaluate(model, test_x, test_y, EVAL_WINDOWS_BATCH if text else EVAL_BATCH_SIZE)
            bits = {"train_bits_per_byte": train_loss / math.log(2), "test_bits_per_byte": test_loss / math.log(2)}
            metrics = EpochMetrics(
                epoch=epoch, step=step - 1, lr=lr, train_loss=train_loss, train_error=train_error,
                test_loss=test_loss, test_error=test_error, test_accuracy=1.0 - test_error,
                time_s=time.perf_counter() - epoch_start, **(bits if text else {}),
            )
            result.epochs.append(metrics)
            monitor.log(
                {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_error": train_error,
                 "test_loss": test_loss, "test_error": test_error, "test_accuracy": metrics.test_accuracy,
                 **(bits if text else {}), "epoch_time_s": metrics.time_s},
                step=step - 1,
            )
            if progress and text:
                bar.set_postfix(loss=f"{train_loss:.4f}", test_loss=f"{test_loss:.4f}",
                                test_bpb=f"{bits['test_bits_per_byte']:.3f}", refresh=False)
            elif progress:
                bar.set_postfix(loss=f"{train_loss:.4f}", acc=f"{1 - train_error:.4f}",
                                test_acc=f"{metrics.test_accuracy:.4f}", refresh=False)
            bar.close()
        result.steps = step
        result.wall_time_s = time.perf_counter() - start
        monitor.set_meta(wall_time_s=result.wall_time_s, steps=step)
    return result
