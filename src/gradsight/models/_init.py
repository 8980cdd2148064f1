"""Weight-initialization schemes shared by the zoo's model families.

Every scheme draws weights of ``nn.Conv2d`` / ``nn.Linear`` layers from a zero-mean normal
distribution, sets their biases to zero and normalization layers to (weight 1, bias 0):

=========  ==========================================================================
``he``     ``N(0, 2 / fan_in)`` (He et al. 2015, forward mode; ReLU gain for every layer)
``lecun``  ``N(0, 1 / fan_in)``
``xavier`` ``N(0, 2 / (fan_in + fan_out))`` (Glorot & Bengio 2010, normal variant)
``normal`` ``N(0, std**2)`` with a fixed ``std`` (0.01 by default), independent of fan-in
``fixup``  ``he``, then Fixup (Zhang et al. 2019, §3): inside every active residual branch of
           ``m`` weight layers, scale all but the last by ``L ** (-1 / (2m - 2))`` (``L`` = number
           of residual branches), zero the last one, and zero the classifier.
=========  ==========================================================================

Fixup's scalar multiplier and scalar biases are not added; networks built with ``norm='none'``
give every conv/linear layer an ordinary bias instead (initialized to zero).
"""

from __future__ import annotations

import torch
from torch import nn

from gradsight.models._blocks import residual_blocks
from gradsight.models._checks import check_choice

INIT_SCHEMES: tuple[str, ...] = ("he", "lecun", "xavier", "normal", "fixup")

_WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)
_NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


@torch.no_grad()
def init_weight_(weight: torch.Tensor, scheme: str, *, std: float = 0.01) -> None:
    """Fill a conv or linear ``weight`` in place by ``scheme`` (``fixup`` acts as ``he``)."""
    check_choice("init", scheme, INIT_SCHEMES)
    if scheme in ("he", "fixup"):
        nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
    elif scheme == "lecun":
        nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="linear")
    elif scheme == "xavier":
        nn.init.xavier_normal_(weight)
    else:
        nn.init.normal_(weight, mean=0.0, std=std)


@torch.no_grad()
def init_model_(model: nn.Module, scheme: str, *, classifier: nn.Module, std: float = 0.01) -> None:
    """Initialize every layer of ``model`` in place with ``scheme`` (see the module docstring).

    Args:
        model: the network; its residual blocks are its active ``ResidualBlock`` modules.
        scheme: one of ``INIT_SCHEMES``.
        classifier: the final linear layer, zeroed by ``fixup``.
        std: standard deviation for ``scheme='normal'``.

    Raises:
        ValueError: unknown scheme, or ``fixup`` on a network without active residual branches.
    """
    check_choice("init", scheme, INIT_SCHEMES)
    for module in model.modules():
        if isinstance(module, _WEIGHT_LAYERS):
            init_weight_(module.weight, scheme, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, _NORM_LAYERS) and module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if scheme == "fixup":
        _fixup_(model, classifier)


def _fixup_(model: nn.Module, classifier: nn.Module) -> None:
    blocks = residual_blocks(model)
    if not blocks:
        raise ValueError("init='fixup' needs residual branches; this network has skip=False")
    num_branches = len(blocks)
    for block in blocks:
        layers = [m for m in block.branch.modules() if isinstance(m, _WEIGHT_LAYERS)]
        depth = len(layers)
        if depth > 1:
            scale = num_branches ** (-1.0 / (2 * depth - 2))
            for layer in layers[:-1]:
                layer.weight.mul_(scale)
        _zero_(layers[-1])
    _zero_(classifier)


def _zero_(layer: nn.Module) -> None:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
