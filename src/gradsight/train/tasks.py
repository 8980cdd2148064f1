"""What training does differently per kind of data (:func:`task_for`).

- :class:`ImageClassification` (:class:`~gradsight.data.DatasetSplits`): a mini-batch is
  ``batch_size`` shuffled samples, an epoch one pass over the training split, the test set
  the whole test split; errors are misclassified samples.
- :class:`NextByte`, language modelling on a byte-level corpus
  (:class:`~gradsight.data.TextSplits`): the model takes windows of ``context`` bytes and is
  built with ``context`` and ``vocab_size``; a mini-batch is ``batch_size`` windows at random
  offsets of the training stream (:func:`gradsight.data.token_batch`), an epoch the recipe's
  ``batches_per_epoch`` steps, the test set up to ``TEST_WINDOWS`` evenly spaced windows of
  the test stream (:func:`gradsight.data.fixed_windows`); errors are next-byte errors, and an
  epoch adds the train and test losses in bits per byte.

A task sizes a model for its data, draws the batches of an epoch, holds the test set and
says what a run's config and an epoch's metrics add; the loop in
:mod:`gradsight.train.runner` is the same for both. Both minimize cross-entropy, over every
position of every window for a language model (:func:`evaluate`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradsight.data import DatasetSplits, TextSplits, batches, fixed_windows, token_batch
from gradsight.models.spec import build_model as build_from_spec

EVAL_BATCH_SIZE = 1000
#: Token data: windows per evaluation batch, windows of the test loss, context without one given.
EVAL_WINDOWS_BATCH = 64
TEST_WINDOWS = 256
DEFAULT_CONTEXT = 64

Batch = tuple[Tensor, Tensor]


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = EVAL_BATCH_SIZE) -> tuple[float, float]:
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


class Task:
    """What the training loop needs to know about its data (see the module docstring).

    Attributes:
        name: ``TrainResult.task``.
        input_kind: the config's ``input_kind`` for a module the model registry did not build.
        eval_batch_size: samples (or windows) per evaluation batch.
        input_shape: the shape of one sample.
        test_x, test_y: the test set on the device (after :meth:`load`).
    """

    name: str
    input_kind: str | None
    eval_batch_size: int
    input_shape: tuple[int, ...]
    test_x: Tensor
    test_y: Tensor

    def model_kwargs(self) -> dict[str, Any]:
        """What a registered model is built with for this data (explicit keywords win)."""
        raise NotImplementedError

    def build_model(self, name: str, *, seed: int = 0, **model_kwargs: Any) -> nn.Module:
        """``name`` (a model spec) sized for the data, its weights drawn after ``torch.manual_seed(seed)``."""
        torch.manual_seed(seed)
        return build_from_spec(name, input_shape=self.input_shape, **{**self.model_kwargs(), **model_kwargs})[0]

    def load(self, device: torch.device) -> None:
        """Put the data on ``device`` (``ValueError`` when it cannot be used)."""
        raise NotImplementedError

    def epoch(self, batch_size: int, steps: int, generator: torch.Generator) -> Iterable[Batch]:
        """The ``steps`` training batches of one epoch, drawn with ``generator``."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        """(test loss, test error) of ``model`` (:func:`evaluate`)."""
        return evaluate(model, self.test_x, self.test_y, self.eval_batch_size)

    def config(self) -> dict[str, Any]:
        """What a run's config adds for this data."""
        return {}

    def epoch_metrics(self, train_loss: float, test_loss: float) -> dict[str, float]:
        """Metrics an epoch adds to the losses and errors (``EpochMetrics`` fields)."""
        return {}

    def postfix(self, metrics: Mapping[str, float]) -> dict[str, str]:
        """The progress bar's summary of an epoch's metrics."""
        raise NotImplementedError


class ImageClassification(Task):
    """Images and class labels (see the module docstring)."""

    name = "classification"
    input_kind = None
    eval_batch_size = EVAL_BATCH_SIZE

    def __init__(self, data: DatasetSplits) -> None:
        self.data = data
        self.input_shape = data.input_shape

    def model_kwargs(self) -> dict[str, Any]:
        return {"num_classes": self.data.num_classes}

    def load(self, device: torch.device) -> None:
        d = self.data
        self.train_x, self.train_y = d.train_x.to(device), d.train_y.to(device)
        self.test_x, self.test_y = d.test_x.to(device), d.test_y.to(device)

    def epoch(self, batch_size: int, steps: int, generator: torch.Generator) -> Iterable[Batch]:
        return batches(self.train_x, self.train_y, batch_size, shuffle=True, generator=generator)

    def postfix(self, metrics: Mapping[str, float]) -> dict[str, str]:
        return {"loss": f"{metrics['train_loss']:.4f}", "acc": f"{1 - metrics['train_error']:.4f}",
                "test_acc": f"{metrics['test_accuracy']:.4f}"}


class NextByte(Task):
    """A language model on a byte-level corpus (see the module docstring).

    Args:
        data: the corpus.
        context: the window length (default ``DEFAULT_CONTEXT``).
    """

    name = "next-token"
    input_kind = "tokens"
    eval_batch_size = EVAL_WINDOWS_BATCH

    def __init__(self, data: TextSplits, context: int | None = None) -> None:
        self.data = data
        self.context = DEFAULT_CONTEXT if context is None else context
        self.input_shape = (self.context,)

    def model_kwargs(self) -> dict[str, Any]:
        return {"context": self.context, "vocab_size": self.data.vocab_size}

    def load(self, device: torch.device) -> None:
        self.train_stream, test_stream = self.data.train.to(device), self.data.test.to(device)
        try:
            self.test_x, self.test_y = fixed_windows(test_stream, self.context, TEST_WINDOWS)
            fixed_windows(self.train_stream, self.context, 1)  # the training stream is long enough too
        except ValueError as exc:
            raise ValueError(f"dataset {self.data.name!r}: {exc}") from None

    def epoch(self, batch_size: int, steps: int, generator: torch.Generator) -> Iterable[Batch]:
        return (token_batch(self.train_stream, self.context, batch_size, generator=generator) for _ in range(steps))

    def config(self) -> dict[str, Any]:
        return {"context": self.context, "vocab_size": self.data.vocab_size, "test_windows": int(self.test_x.shape[0]),
                "text": self.data.config()}

    def epoch_metrics(self, train_loss: float, test_loss: float) -> dict[str, float]:
        return {"train_bits_per_byte": train_loss / math.log(2), "test_bits_per_byte": test_loss / math.log(2)}

    def postfix(self, metrics: Mapping[str, float]) -> dict[str, str]:
        return {"loss": f"{metrics['train_loss']:.4f}", "test_loss": f"{metrics['test_loss']:.4f}",
                "test_bpb": f"{metrics['test_bits_per_byte']:.3f}"}


def task_for(data: DatasetSplits | TextSplits, context: int | None = None) -> Task:
    """The task of ``data``: :class:`NextByte` (windows of ``context`` bytes) on a byte-level
    corpus, else :class:`ImageClassification` (``context`` is not used)."""
    if isinstance(data, TextSplits):
        return NextByte(data, context)
    return ImageClassification(data)
