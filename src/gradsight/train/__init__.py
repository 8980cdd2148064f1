"""Training: one monitored train/evaluate loop, the lecture's and He et al.'s recipes,
``compare``, which trains a grid of networks on the same data in the same order, and the demo.

    >>> import gradsight as gs
    >>> data = gs.data.load_dataset("mnist5k")
    >>> result = gs.train.train("resnet", data, "lecture", depth=20, epochs=2, run_dir="runs/r20")
    >>> from gradsight.train.compare import compare
    >>> result = compare(["plain", "resnet"], [20, 56], "mnist5k", epochs=2, out="out/cmp")
    >>> result.table, result.figures, result.run_dirs
"""

from gradsight.train.recipes import RECIPES, Recipe, get_recipe, gpt, he2016, lecture, list_recipes
from gradsight.train.runner import (
    EpochMetrics,
    TrainResult,
    auto_schedule,
    build_for_data,
    build_model,
    evaluate,
    resolve_device,
    train,
)

__all__ = [
    "RECIPES",
    "EpochMetrics",
    "Recipe",
    "TrainResult",
    "auto_schedule",
    "build_for_data",
    "build_model",
    "evaluate",
    "get_recipe",
    "gpt",
    "he2016",
    "lecture",
    "list_recipes",
    "resolve_device",
    "train",
]
