"""Deep plain and residual MLPs on flattened inputs, for gradient-flow experiments and theory tests.

``depth`` counts linear layers: a stem (in_features -> width), ``(depth - 2) / 2`` blocks of two
width x width layers, and a head (width -> num_classes)::

    h_0 = act(norm(W_in x))
    h_l = act(branch_l(h_{l-1}))            skip=False: a plain MLP, every layer followed by act
    h_l = h_{l-1} + branch_l(h_{l-1})       skip=True: no activation after the addition
    branch_l(h) = norm2(W_l2 act(norm1(W_l1 h)))
    y = W_out h_L

A plain MLP and its residual twin have the same parameters. Two recipes used by theory tests
(also registered):

- plain ReLU MLP, width 512, 20 layers, weights N(0, 1/fan_in), no bias:
  ``mlp(depth=20, width=512, init='lecun', bias=False)``, registered as ``mlp20_lecun_nobias``;
- unnormalized residual MLP ``x + W2 relu(W1 x)`` with He init and no bias:
  ``resmlp(depth=20, width=512, init='he', bias=False)``, registered as ``resmlp20_he_nobias``.

Parameter names: ``stem.fc.weight``, ``body.block0.branch.fc1.weight``, ``head.fc.weight``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from gradsight.models._blocks import ResidualBlock
from gradsight.models._checks import check_choice
from gradsight.models._init import INIT_SCHEMES, init_model_
from gradsight.models._registry import register_model

__all__ = ["MLP", "MLPBlock", "ACTIVATIONS", "MLP_NORMS", "mlp_blocks"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "linear": nn.Identity,
}
MLP_NORMS: tuple[str, ...] = ("none", "layer", "batch")


def mlp_blocks(depth: int) -> int:
    """Number of two-layer blocks in an MLP of ``depth`` linear layers; ``ValueError`` if bad."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2 or depth % 2:
        raise ValueError(
            "depth counts linear layers (stem + 2 per block + head) and must be 2n+2 "
            f"(even, >= 2), e.g. 4, 10, 20; got {depth!r}"
        )
    return (depth - 2) // 2


def _norm1d(norm: str, width: int) -> nn.Module | None:
    if norm == "layer":
        return nn.LayerNorm(width)
    if norm == "batch":
        return nn.BatchNorm1d(width)
    return None


def _dense(
    in_features: int,
    out_features: int,
    suffix: str,
    *,
    norm: str,
    bias: bool,
    activation: str | None,
) -> list[tuple[str, nn.Module]]:
    """Named layers ``fc{suffix}``, ``norm{suffix}`` (unless norm='none'), ``act`` (if given)."""
    layers: list[tuple[str, nn.Module]] = [
        (f"fc{suffix}", nn.Linear(in_features, out_features, bias=bias))
    ]
    norm_layer = _norm1d(norm, out_features)
    if norm_layer is not None:
        layers.append((f"norm{suffix}", norm_layer))
    if activation is not None:
        layers.append(("act", ACTIVATIONS[activation]()))
    return layers


class MLPBlock(ResidualBlock):
    """Two width x width linear layers with a ``skip`` switch.

        branch(x) = norm2(fc2(act(norm1(fc1(x)))))
        out = branch(x) + shortcut(x)   if skip (shortcut is nn.Identity, post_act is None)
        out = act(branch(x))            otherwise (two ordinary layers of a plain MLP)

    Shapes: (N, width) -> (N, width). ``shortcut`` is ``None`` when ``skip`` is off.
    """

    def __init__(
        self,
        width: int,
        *,
        skip: bool,
        activation: str = "relu",
        norm: str = "none",
        bias: bool = True,
    ) -> None:
        layers = _dense(width, width, "1", norm=norm, bias=bias, activation=activation)
        layers += _dense(width, width, "2", norm=norm, bias=bias, activation=None)
        super().__init__(
            nn.Sequential(OrderedDict(layers)),
            nn.Identity(),
            skip=skip,
            post_act=None if skip else ACTIVATIONS[activation](),
        )


class MLP(nn.Module):
    """Deep plain (``skip=False``) or residual (``skip=True``) MLP; see the module docstring.

    Input of any shape (N, *) with ``prod(*) == in_features`` is flattened; output logits
    (N, num_classes).

    Args:
        depth: number of linear layers, 2n+2 (stem + n blocks of 2 + head).
        width: hidden width.
        in_features: flattened input size (784 for 1x28x28, 3072 for 3x32x32).
        num_classes: number of logits.
        activation: 'relu', 'tanh', 'sigmoid', 'gelu' or 'linear' (no nonlinearity).
        init: 'he' (N(0, 2/fan_in)), 'lecun' (N(0, 1/fan_in)), 'xavier', 'normal'
            (N(0, init_std**2)) or 'fixup' (needs ``skip=True``); biases start at zero.
        norm: 'none', 'layer' or 'batch', after every hidden linear layer.
        bias: give every linear layer a bias.
        skip: residual blocks when True.
        init_std: standard deviation for ``init='normal'``.
    """

    def __init__(
        self,
        *,
        depth: int = 10,
        width: int = 256,
        in_features: int = 784,
        num_classes: int = 10,
        activation: str = "relu",
        init: str = "he",
        norm: str = "none",
        bias: bool = True,
        skip: bool = False,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        n = mlp_blocks(depth)
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("init", init, INIT_SCHEMES)
        check_choice("norm", norm, MLP_NORMS)
        if init == "fixup" and not skip:
            raise ValueError("init='fixup' needs residual branches; got skip=False")
        self.depth = depth
        self.skip = skip
        stem = _dense(in_features, width, "", norm=norm, bias=bias, activation=activation)
        self.stem = nn.Sequential(OrderedDict(stem))
        self.body = nn.Sequential()
        for i in range(n):
            block = MLPBlock(width, skip=skip, activation=activation, norm=norm, bias=bias)
            self.body.add_module(f"block{i}", block)
        self.head = nn.Sequential(OrderedDict(fc=nn.Linear(width, num_classes, bias=bias)))
        init_model_(self, init, classifier=self.head.fc, std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        x = self.stem(x)
        x = self.body(x)
        return self.head(x)


#: Default input: a flattened 28x28 image.
MLP_INPUT: tuple[int] = (784,)


def _depth_rule(default: int):
    def depth(kwargs: dict[str, Any]) -> int:
        value = kwargs.get("depth", default)
        mlp_blocks(value)  # ValueError naming the valid depths
        return value

    return depth


def _register_mlp(family: str, default_depth: int):
    return register_model(family=family, depth=_depth_rule(default_depth), input_kind="vector",
                          input_shape=MLP_INPUT)


@_register_mlp("mlp", 10)
def mlp(*, depth: int = 10, width: int = 256, **kwargs: Any) -> MLP:
    """Plain MLP, every layer followed by act (depth = number of linear layers, even)."""
    return MLP(depth=depth, width=width, skip=False, **kwargs)


@_register_mlp("resmlp", 10)
def resmlp(*, depth: int = 10, width: int = 256, **kwargs: Any) -> MLP:
    """Residual MLP, blocks x + W2 act(W1 x) (depth = number of linear layers, even)."""
    return MLP(depth=depth, width=width, skip=True, **kwargs)


@_register_mlp("mlp", 20)
def mlp20_lecun_nobias(**kwargs: Any) -> MLP:
    """Plain ReLU MLP, 20 linear layers of width 512, weights N(0, 1/fan_in), no bias."""
    return mlp(**{"depth": 20, "width": 512, "init": "lecun", "bias": False, **kwargs})


@_register_mlp("resmlp", 20)
def resmlp20_he_nobias(**kwargs: Any) -> MLP:
    """Unnormalized residual MLP x + W2 relu(W1 x): 20 linear layers, width 512, He, no bias."""
    return resmlp(**{"depth": 20, "width": 512, "init": "he", "bias": False, **kwargs})
