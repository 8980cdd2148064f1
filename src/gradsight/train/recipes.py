"""Training recipes: optimizer, learning-rate schedule and batch size, as commented dataclasses.

Two recipes ship with gradsight:

- ``lecture``: what the lecture's MNIST experiment uses (Adam, lr 1e-3, batch 64, 10 epochs,
  constant learning rate, no weight decay).
- ``he2016``: the CIFAR-10 recipe of He et al. 2016, "Deep Residual Learning", §4.2 (SGD with
  momentum 0.9, lr 0.1 divided by 10 at 32k and 48k of 64k iterations, i.e. at 50% and 75% of
  training, weight decay 1e-4, batch 128).

The learning rate changes per optimizer step (as He et al. count iterations), so a milestone
at 50% of training falls exactly on an epoch boundary when the number of epochs is even.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["RECIPES", "Recipe", "get_recipe", "he2016", "lecture", "list_recipes"]

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class Recipe:
    """How to train: the optimizer, its learning-rate schedule, the batch size and default epochs."""

    name: str
    optimizer: str  # "adam" or "sgd"
    lr: float  # initial learning rate
    batch_size: int  # training mini-batch size (evaluation uses larger batches)
    epochs: int  # default number of epochs (the CLI's --epochs overrides it)
    momentum: float = 0.0  # SGD momentum (ignored by Adam)
    weight_decay: float = 0.0  # L2 penalty, coupled as in torch.optim.SGD / Adam
    # Fractions of all training steps at which the learning rate is multiplied by lr_decay.
    lr_milestones: tuple[float, ...] = field(default=())
    lr_decay: float = 0.1
    description: str = ""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError("lr must be > 0, batch_size and epochs >= 1")
        if any(not 0 < m < 1 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones are fractions of training in (0, 1); got {self.lr_milestones}")

    def make_optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The recipe's optimizer over ``params``, at the initial learning rate."""
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def milestone_steps(self, total_steps: int) -> list[int]:
        """Step indices (0-based) from which each decay applies: ``round(fraction * total_steps)``."""
        return [int(round(m * total_steps)) for m in self.lr_milestones]

    def lr_factor(self, step: int, total_steps: int) -> float:
        """Multiplier of ``lr`` at optimizer step ``step`` (0-based) of ``total_steps``."""
        passed = sum(step >= s for s in self.milestone_steps(total_steps))
        return self.lr_decay**passed

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate used by optimizer step ``step`` (0-based) of ``total_steps``."""
        return self.lr * self.lr_factor(step, total_steps)

    def make_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        """A ``LambdaLR`` to step once after every optimizer step (per-iteration schedule)."""
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_factor(step, total_steps))

    def steps_per_epoch(self, num_train: int) -> int:
        """Optimizer steps in one epoch over ``num_train`` samples (the last batch may be smaller)."""
        return math.ceil(num_train / self.batch_size)

    def summary(self) -> str:
        """The settings in one line, e.g. ``Adam, lr 0.001, batch 64``."""
        parts = ["Adam" if self.optimizer == "adam" else "SGD", f"lr {self.lr:g}"]
        if self.optimizer == "sgd" and self.momentum:
            parts.append(f"momentum {self.momentum:g}")
        if self.lr_milestones:
            at = " and ".join(f"{100 * m:g}%" for m in self.lr_milestones)
            parts.append(f"lr x{self.lr_decay:g} at {at} of training")
        if self.weight_decay:
            parts.append(f"weight decay {self.weight_decay:g}")
        parts.append(f"batch {self.batch_size}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable settings, as stored in a run's config."""
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d


lecture = Recipe(
    name="lecture",
    optimizer="adam",
    lr=1e-3,
    batch_size=64,
    epochs=10,
    description="the lecture's MNIST experiment: Adam, lr 1e-3, batch 64, 10 epochs",
)

he2016 = Recipe(
    name="he2016",
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    batch_size=128,
    # 64k iterations at batch 128 on 45k CIFAR-10 images is about 182 epochs; 164 on 50k.
    epochs=164,
    lr_milestones=(0.5, 0.75),
    lr_decay=0.1,
    description="He et al. 2016 (CIFAR-10): SGD momentum 0.9, lr 0.1 /10 at 50% and 75%, wd 1e-4, batch 128",
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (lecture, he2016)}


def list_recipes() -> list[str]:
    """Names ``get_recipe`` accepts."""
    return list(RECIPES)


def get_recipe(recipe: str | Recipe) -> Recipe:
    """The recipe named ``recipe`` (a ``Recipe`` is returned as is); ``ValueError`` naming the valid ones."""
    if isinstance(recipe, Recipe):
        return recipe
    try:
        return RECIPES[recipe]
    except KeyError:
        raise ValueError(f"unknown recipe {recipe!r}; valid recipes: {', '.join(RECIPES)}") from None
