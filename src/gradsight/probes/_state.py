"""Model state that the probes change temporarily and put back: BN buffers, training flags."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """Every BN layer of ``model`` (1-d, 2-d, 3-d, sync)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


@contextlib.contextmanager
def state_restored(model: nn.Module) -> Iterator[None]:
    """Context: on exit, every module's training flag and every BN buffer (running mean and
    variance, batch count) are as they were on entry."""
    modes = {module: module.training for module in model.modules()}
    saved = [
        (norm, {k: v.clone() for k, v in norm.named_buffers(recurse=False)})
        for norm in batchnorms(model)
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, buffers in saved:
                for name, value in buffers.items():
                    getattr(norm, name).copy_(value)
        for module, training in modes.items():
            module.train(training)
