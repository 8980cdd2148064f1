"""Training recipes: optimizer, learning-rate schedule and batch size, as commented dataclasses.

Three recipes ship with gradsight:

- ``lecture``: what the lecture's MNIST experiment uses (Adam, lr 1e-3, batch 64, 10 epochs,
  constant learning rate, no weight decay).
- ``he2016``: the CIFAR-10 recipe of He et al. 2016, "Deep Residual Learning", §4.2 (SGD with
  momentum 0.9, lr 0.1 divided by 10 at 32k and 48k of 64k iterations, i.e. at 50% and 75% of
  training, weight decay 1e-4, batch 128).
- ``gpt``: small byte-level language models on 2 CPU cores (nanoGPT's optimizer: AdamW, betas
  (0.9, 0.95), weight decay 0.1 on matrices and embeddings only, none on biases and norms;
  lr 1e-3, constant, batch 32 windows of 64 bytes, an epoch of 100 batches, 5 epochs, no
  gradient clipping). lr 1e-3 is nanoGPT's for its small character-level model; the rate stays
  constant and nothing is clipped so that training with and without ``warmup_steps`` differs in
  the warmup alone, and an instability shows in the loss and in the recorded gradients.

Any recipe can warm up: ``warmup_steps`` (``gradsight compare --warmup``) scales the learning rate
linearly, by ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps. With
``grad_clip`` the runner clips the gradient norm after ``monitor.step()``, so the recorded
gradients are the unclipped ones.

The learning rate changes per optimizer step (as He et al. count iterations), so a milestone
at 50% of training falls exactly on an epoch boundary when the number of epochs is even.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["RECIPES", "Recipe", "get_recipe", "gpt", "he2016", "lecture", "list_recipes"]

OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True)
class Recipe:
    """How to train: the optimizer, its learning-rate schedule, the batch size and default epochs."""

    name: str
    optimizer: str  # "adam", "adamw" or "sgd"
    lr: float  # initial learning rate
    batch_size: int  # training mini-batch size (evaluation uses larger batches)
    epochs: int  # default number of epochs (the CLI's --epochs overrides it)
    momentum: float = 0.0  # SGD momentum (ignored by Adam)
    # SGD / Adam: L2 penalty on every parameter, coupled as in torch.optim.SGD / Adam;
    # AdamW: decoupled, on parameters with two or more dims only (matrices, embeddings).
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # Adam and AdamW
    warmup_steps: int = 0  # linear warmup over the first steps; 0: none
    grad_clip: float = 0.0  # clip the gradient norm to this after recording it; 0: no clipping
    # Token data: batches per epoch (an epoch is a fixed number of random windows) and the
    # window length; None: one pass over the samples, and the runner's default context.
    batches_per_epoch: int | None = None
    context: int | None = None
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
        if self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("warmup_steps and grad_clip must be >= 0 (0: none)")
        if (self.batches_per_epoch is not None and self.batches_per_epoch < 1) or (
                self.context is not None and self.context < 1):
            raise ValueError("batches_per_epoch and context must be >= 1 when given")

    def make_optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The recipe's optimizer over ``params``, at the initial learning rate."""
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        if self.optimizer == "adamw":
            params = list(params)
            groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": self.weight_decay},
                      {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
            return torch.optim.AdamW([g for g in groups if g["params"]], lr=self.lr, betas=self.betas)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def milestone_steps(self, total_steps: int) -> list[int]:
        """Step indices (0-based) from which each decay applies: ``round(fraction * total_steps)``."""
        return [int(round(m * total_steps)) for m in self.lr_milestones]

    def lr_factor(self, step: int, total_steps: int) -> float:
        """Multiplier of ``lr`` at optimizer step ``step`` (0-based) of ``total_steps``."""
        passed = sum(step >= s for s in self.milestone_steps(total_steps))
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return warmup * self.lr_decay**passed

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate used by optimizer step ``step`` (0-based) of ``total_steps``."""
        return self.lr * self.lr_factor(step, total_steps)

    def make_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        """A ``LambdaLR`` to step once after every optimizer step (per-iteration schedule)."""
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_factor(step, total_steps))

    def steps_per_epoch(self, num_train: int) -> int:
        """Optimizer steps in one epoch over ``num_train`` samples (the last batch may be smaller),
        or ``batches_per_epoch`` when the recipe fixes it."""
        if self.batches_per_epoch is not None:
            return self.batches_per_epoch
        return math.ceil(num_train / self.batch_size)

    def summary(self) -> str:
        """The settings in one line, e.g. ``Adam, lr 0.001, batch 64``."""
        parts = [{"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}[self.optimizer], f"lr {self.lr:g}"]
        if self.optimizer == "sgd" and self.momentum:
            parts.append(f"momentum {self.momentum:g}")
        if self.optimizer != "sgd" and self.betas != (0.9, 0.999):
            parts.append(f"betas ({self.betas[0]:g}, {self.betas[1]:g})")
        if self.warmup_steps:
            parts.append(f"linear warmup over {self.warmup_steps} steps")
        if self.lr_milestones:
            at = " and ".join(f"{100 * m:g}%" for m in self.lr_milestones)
            parts.append(f"lr x{self.lr_decay:g} at {at} of training")
        if self.weight_decay:
            on = " on matrices" if self.optimizer == "adamw" else ""
            parts.append(f"weight decay {self.weight_decay:g}{on}")
        if self.grad_clip:
            parts.append(f"gradient norm clipped to {self.grad_clip:g}")
        parts.append(f"batch {self.batch_size}")
        if self.context is not None:
            parts.append(f"context {self.context}")
        if self.batches_per_epoch is not None:
            parts.append(f"{self.batches_per_epoch} batches per epoch")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable settings, as stored in a run's config."""
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        d["betas"] = list(self.betas)
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

gpt = Recipe(
    name="gpt",
    optimizer="adamw",
    lr=1e-3,
    betas=(0.9, 0.95),
    weight_decay=0.1,
    batch_size=32,
    context=64,
    batches_per_epoch=100,
    epochs=5,
    description="small byte-level language models: AdamW lr 1e-3, betas (0.9, 0.95), wd 0.1 on matrices, "
                "batch 32 x 64 bytes, 100 batches per epoch, 5 epochs",
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (lecture, he2016, gpt)}


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
