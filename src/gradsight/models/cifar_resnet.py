"""CIFAR-style plain and residual CNNs of depth 6n+2 (He et al. 2016a, §4.2; He et al. 2016b).

One block class per activation order (``BasicBlock``, ``PreActBlock``), each with a ``skip``
switch, so a plain network and its residual twin have the same layers. With the parameter-free
shortcut 'A' they have exactly the same parameters:

    ResNet-20 / 56 / 110 (3 input channels, 10 classes): 269,722 / 853,018 / 1,727,962
    = 97,216 n - 21,926 for depth 6n + 2.

Parameter names read like paths: ``stem.conv.weight``, ``stage1.block0.branch.conv1.weight``,
``stage2.block0.shortcut.conv.weight`` (shortcut 'B'), ``head.fc.weight``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradsight.models._blocks import ResidualBlock
from gradsight.models._checks import check_choice
from gradsight.models._init import INIT_SCHEMES, init_model_
from gradsight.models._registry import register_model

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "PadShortcut",
    "PreActBlock",
    "blocks_per_stage",
]

SHORTCUTS: tuple[str, ...] = ("A", "B")
NORMS: tuple[str, ...] = ("batch", "none")
STAGE_WIDTHS: tuple[int, int, int] = (16, 32, 64)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """3x3 conv, padding 1: (N, in_planes, H, W) -> (N, out_planes, ceil(H/s), ceil(W/s))."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=bias)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """1x1 convolution: (N, in_planes, H, W) -> (N, out_planes, ceil(H/s), ceil(W/s))."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=bias)


def blocks_per_stage(depth: int) -> int:
    """``n`` for a network of depth ``6n + 2``; ``ValueError`` naming valid depths otherwise."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"depth must be 6n+2 with n >= 1 (e.g. 20, 32, 44, 56, 110); got {depth!r}"
        )
    return (depth - 2) // 6


class PadShortcut(nn.Module):
    """Shortcut option A: identity, subsampled by ``stride`` and zero-padded to ``out_planes``.

    Parameter-free. (N, in_planes, H, W) -> (N, out_planes, ceil(H/s), ceil(W/s)); the input's
    channels sit in the middle, with ``(out_planes - in_planes) // 2`` zero channels before them
    and the rest after, as in the usual CIFAR reimplementation of He et al. (2016a).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(f"cannot pad {in_planes} channels down to {out_planes}")
        self.stride = stride
        self.pad_before = (out_planes - in_planes) // 2
        self.pad_after = out_planes - in_planes - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after})"


def _make_shortcut(
    in_planes: int, planes: int, stride: int, option: str, *, with_norm: bool, bias: bool
) -> nn.Module:
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    if option == "A":
        return PadShortcut(in_planes, planes, stride)
    layers: list[tuple[str, nn.Module]] = [("conv", conv1x1(in_planes, planes, stride, bias=bias))]
    if with_norm:
        layers.append(("bn", nn.BatchNorm2d(planes)))
    return nn.Sequential(OrderedDict(layers))


class BasicBlock(ResidualBlock):
    """Post-activation basic block (He et al. 2016a): two 3x3 convs, then the skip, then ReLU.

        branch(x) = bn2(conv2(relu1(bn1(conv1(x)))))
        out = relu(branch(x) + shortcut(x))   if skip
        out = relu(branch(x))                 otherwise (a plain block, same parameters)

    Shapes: (N, in_planes, H, W) -> (N, planes, ceil(H/stride), ceil(W/stride)).
    ``norm='none'`` drops the BN layers and gives the convs biases. ``shortcut`` is ``None`` when
    ``skip`` is off; otherwise ``nn.Identity`` where the shape is kept, and ``PadShortcut`` (option
    'A') or a 1x1 conv + BN projection (option 'B') where it changes. ``post_act`` is the ReLU.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        *,
        stride: int = 1,
        skip: bool = True,
        shortcut: str = "A",
        norm: str = "batch",
    ) -> None:
        with_norm, bias = norm == "batch", norm == "none"
        layers: list[tuple[str, nn.Module]] = [("conv1", conv3x3(in_planes, planes, stride, bias))]
        if with_norm:
            layers.append(("bn1", nn.BatchNorm2d(planes)))
        layers += [("relu1", nn.ReLU()), ("conv2", conv3x3(planes, planes, 1, bias))]
        if with_norm:
            layers.append(("bn2", nn.BatchNorm2d(planes)))
        super().__init__(
            nn.Sequential(OrderedDict(layers)),
            _make_shortcut(in_planes, planes, stride, shortcut, with_norm=with_norm, bias=bias),
            skip=skip,
            post_act=nn.ReLU(),
        )


class PreActBlock(ResidualBlock):
    """Full pre-activation block (He et al. 2016b, Fig. 4e): BN-ReLU-conv, twice, then the skip.

        branch(x) = conv2(relu2(bn2(conv1(relu1(bn1(x))))))
        out = branch(x) + shortcut(x)   if skip (nothing after the addition: post_act is None)
        out = branch(x)                 otherwise

    Shapes: (N, in_planes, H, W) -> (N, planes, ceil(H/stride), ceil(W/stride)).
    The shortcut takes the block's raw input, so ``out`` is exactly ``branch(x) + shortcut(x)``;
    option 'B' projects with a 1x1 conv alone (the next block's BN follows it).
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        *,
        stride: int = 1,
        skip: bool = True,
        shortcut: str = "A",
        norm: str = "batch",
    ) -> None:
        with_norm, bias = norm == "batch", norm == "none"
        layers: list[tuple[str, nn.Module]] = []
        if with_norm:
            layers.append(("bn1", nn.BatchNorm2d(in_planes)))
        layers += [("relu1", nn.ReLU()), ("conv1", conv3x3(in_planes, planes, stride, bias))]
        if with_norm:
            layers.append(("bn2", nn.BatchNorm2d(planes)))
        layers += [("relu2", nn.ReLU()), ("conv2", conv3x3(planes, planes, 1, bias))]
        super().__init__(
            nn.Sequential(OrderedDict(layers)),
            _make_shortcut(in_planes, planes, stride, shortcut, with_norm=False, bias=bias),
            skip=skip,
        )


class CifarResNet(nn.Module):
    """Plain or residual CNN of depth 6n+2 for small images (He et al. 2016a, §4.2).

    Layout (``n = (depth - 2) / 6`` blocks per stage, two 3x3 convs per block)::

        stem    conv3x3(in_channels -> 16) + BN + ReLU      (pre-activation: the conv alone)
        stage1  n blocks, 16 filters, H x W
        stage2  n blocks, 32 filters, stride 2 in block0    H/2 x W/2 (rounded up)
        stage3  n blocks, 64 filters, stride 2 in block0    H/4 x W/4 (rounded up)
        head    [BN + ReLU (pre-activation)] + global average pool + linear(64 -> num_classes)

    Input (N, in_channels, H, W), e.g. 1x28x28 (MNIST) or 3x32x32 (CIFAR-10); output logits
    (N, num_classes).

    Args:
        depth: 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...).
        in_channels: input image channels.
        num_classes: number of logits.
        skip: residual (True) or plain (False) network; same layers either way.
        shortcut: 'A' parameter-free zero-padding shortcut, or 'B' 1x1 projection where the
            shape changes. Plain networks have no shortcut.
        norm: 'batch' (BN after every conv) or 'none' (no BN; convs get biases).
        init: weight initialization, one of 'he', 'lecun', 'xavier', 'normal', 'fixup'
            (see ``gradsight.models._init``); 'fixup' needs ``skip=True``.
        preact: use ``PreActBlock`` (He et al. 2016b) instead of ``BasicBlock``.
    """

    def __init__(
        self,
        *,
        depth: int = 20,
        in_channels: int = 3,
        num_classes: int = 10,
        skip: bool = True,
        shortcut: str = "A",
        norm: str = "batch",
        init: str = "he",
        preact: bool = False,
    ) -> None:
        super().__init__()
        n = blocks_per_stage(depth)
        check_choice("shortcut", shortcut, SHORTCUTS)
        check_choice("norm", norm, NORMS)
        check_choice("init", init, INIT_SCHEMES)
        if init == "fixup" and not skip:
            raise ValueError("init='fixup' needs residual branches; got skip=False")
        self.depth = depth
        self.skip = skip
        self.preact = preact
        with_norm, bias = norm == "batch", norm == "none"
        width = STAGE_WIDTHS[0]

        stem: list[tuple[str, nn.Module]] = [("conv", conv3x3(in_channels, width, 1, bias))]
        if not preact:
            if with_norm:
                stem.append(("bn", nn.BatchNorm2d(width)))
            stem.append(("relu", nn.ReLU()))
        self.stem = nn.Sequential(OrderedDict(stem))

        block = PreActBlock if preact else BasicBlock
        in_planes = width
        for index, planes in enumerate(STAGE_WIDTHS, start=1):
            blocks = OrderedDict()
            for i in range(n):
                stride = 2 if (i == 0 and index > 1) else 1
                blocks[f"block{i}"] = block(
                    in_planes, planes, stride=stride, skip=skip, shortcut=shortcut, norm=norm
                )
                in_planes = planes
            self.add_module(f"stage{index}", nn.Sequential(blocks))

        head: list[tuple[str, nn.Module]] = []
        if preact:
            if with_norm:
                head.append(("bn", nn.BatchNorm2d(in_planes)))
            head.append(("relu", nn.ReLU()))
        head += [
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
            ("fc", nn.Linear(in_planes, num_classes)),
        ]
        self.head = nn.Sequential(OrderedDict(head))

        init_model_(self, init, classifier=self.head.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stage1(x)
        x = self.stage2(x)
        x = self.stage3(x)
        return self.head(x)


# --- registered factories -------------------------------------------------------------------
# Keywords not named here go to CifarResNet: in_channels, num_classes, shortcut, norm, init.
# Inputs are CIFAR-sized images by default; ``in_channels`` changes the channels.
CIFAR_INPUT: tuple[int, int, int] = (3, 32, 32)


def _any_depth(kwargs: dict[str, Any]) -> int:
    depth = kwargs.get("depth", 20)
    blocks_per_stage(depth)  # ValueError naming the valid depths
    return depth


def _register_cifar(family: str, depth: int | None = None):
    """``register_model`` for a CIFAR CNN of ``family``: at ``depth``, or any depth 6n+2."""
    return register_model(family=family, depth=_any_depth if depth is None else depth,
                          input_kind="image", input_shape=CIFAR_INPUT)


@_register_cifar("plain")
def plain(*, depth: int = 20, **kwargs: Any) -> CifarResNet:
    """Plain CNN of any depth 6n+2 (no skip connections; He et al. 2016a, §4.2)."""
    return CifarResNet(depth=depth, skip=False, **kwargs)


@_register_cifar("resnet")
def resnet(*, depth: int = 20, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet of any depth 6n+2 (He et al. 2016a, §4.2)."""
    return CifarResNet(depth=depth, skip=True, **kwargs)


@_register_cifar("preresnet")
def preresnet(*, depth: int = 20, **kwargs: Any) -> CifarResNet:
    """Pre-activation CIFAR ResNet of any depth 6n+2 (He et al. 2016b)."""
    return CifarResNet(depth=depth, skip=True, preact=True, **kwargs)


@_register_cifar("plain", 20)
def plain20(**kwargs: Any) -> CifarResNet:
    """Plain-20: 19 convs + linear, the no-skip twin of ResNet-20."""
    return plain(depth=20, **kwargs)


@_register_cifar("plain", 32)
def plain32(**kwargs: Any) -> CifarResNet:
    """Plain-32: the no-skip twin of ResNet-32."""
    return plain(depth=32, **kwargs)


@_register_cifar("plain", 44)
def plain44(**kwargs: Any) -> CifarResNet:
    """Plain-44: the no-skip twin of ResNet-44."""
    return plain(depth=44, **kwargs)


@_register_cifar("plain", 56)
def plain56(**kwargs: Any) -> CifarResNet:
    """Plain-56: the no-skip twin of ResNet-56."""
    return plain(depth=56, **kwargs)


@_register_cifar("plain", 110)
def plain110(**kwargs: Any) -> CifarResNet:
    """Plain-110: the no-skip twin of ResNet-110."""
    return plain(depth=110, **kwargs)


@_register_cifar("resnet", 20)
def resnet20(**kwargs: Any) -> CifarResNet:
    """ResNet-20 for CIFAR/MNIST (0.27M parameters with shortcut 'A')."""
    return resnet(depth=20, **kwargs)


@_register_cifar("resnet", 32)
def resnet32(**kwargs: Any) -> CifarResNet:
    """ResNet-32 for CIFAR/MNIST (0.46M parameters with shortcut 'A')."""
    return resnet(depth=32, **kwargs)


@_register_cifar("resnet", 44)
def resnet44(**kwargs: Any) -> CifarResNet:
    """ResNet-44 for CIFAR/MNIST (0.66M parameters with shortcut 'A')."""
    return resnet(depth=44, **kwargs)


@_register_cifar("resnet", 56)
def resnet56(**kwargs: Any) -> CifarResNet:
    """ResNet-56 for CIFAR/MNIST (0.85M parameters with shortcut 'A')."""
    return resnet(depth=56, **kwargs)


@_register_cifar("resnet", 110)
def resnet110(**kwargs: Any) -> CifarResNet:
    """ResNet-110 for CIFAR/MNIST (1.7M parameters with shortcut 'A')."""
    return resnet(depth=110, **kwargs)


@_register_cifar("preresnet", 20)
def preresnet20(**kwargs: Any) -> CifarResNet:
    """Pre-activation ResNet-20 (He et al. 2016b)."""
    return preresnet(depth=20, **kwargs)


@_register_cifar("preresnet", 56)
def preresnet56(**kwargs: Any) -> CifarResNet:
    """Pre-activation ResNet-56 (He et al. 2016b)."""
    return preresnet(depth=56, **kwargs)


@_register_cifar("preresnet", 110)
def preresnet110(**kwargs: Any) -> CifarResNet:
    """Pre-activation ResNet-110 (He et al. 2016b)."""
    return preresnet(depth=110, **kwargs)
