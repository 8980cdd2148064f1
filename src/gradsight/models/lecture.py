"""The lecture's ``SimpleResNet``, made into a working MNIST classifier, and its plain twin."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from gradsight.models._blocks import ResidualBlock
from gradsight.models._registry import register_model

__all__ = ["LectureBlock", "LectureSimpleResNet", "SimpleResNet"]


class LectureBlock(ResidualBlock):
    """The lecture's block: conv3x3 -> ReLU -> conv3x3, the skip, then ReLU; biases, no BN.

        branch(x) = conv2(relu1(conv1(x)))
        out = relu(branch(x) + shortcut(x))   if skip
        out = relu(branch(x))                 otherwise

    Shapes: (N, in_channels, H, W) -> (N, width, H, W). ``shortcut`` is a 1x1 conv projection
    (``shortcut.conv``, no bias) when ``in_channels != width``, ``nn.Identity`` otherwise, and
    ``None`` when ``skip`` is off.
    """

    def __init__(self, in_channels: int, width: int, *, skip: bool = True) -> None:
        branch = OrderedDict(
            conv1=nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(width, width, kernel_size=3, padding=1),
        )
        shortcut: nn.Module = nn.Identity()
        if in_channels != width:
            projection = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
            shortcut = nn.Sequential(OrderedDict(conv=projection))
        super().__init__(nn.Sequential(branch), shortcut, skip=skip, post_act=nn.ReLU())


class SimpleResNet(nn.Module):
    """The lecture's ``SimpleResNet`` (code example 1), fixed so it trains on MNIST.

    conv(1 -> 64, 3x3, pad 1) -> ReLU -> conv(64 -> 64), plus a 1x1 projection shortcut, add,
    ReLU; then adaptive average pooling and a linear head. Input (N, in_channels, H, W), e.g.
    (N, 1, 28, 28); output logits (N, num_classes). PyTorch's default initialization, as in the
    lecture. ``skip=False`` gives the plain twin (``lecture_plain``), which lacks only the
    projection's ``width * in_channels`` weights.

    What the original got wrong:

    - ``out += identity`` added the 1-channel input to the 64-channel output by broadcasting,
      instead of projecting it to 64 channels;
    - it had no pooling or classifier head, so its output was 64x28x28 rather than 10 logits and
      it could not be trained with cross-entropy;
    - the in-place add (like ``ReLU(inplace=True)``) breaks ``register_full_backward_hook``
      instrumentation; here the add is out of place.
    """

    def __init__(
        self, *, in_channels: int = 1, num_classes: int = 10, width: int = 64, skip: bool = True
    ) -> None:
        super().__init__()
        self.block = LectureBlock(in_channels, width, skip=skip)
        self.head = nn.Sequential(
            OrderedDict(
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                fc=nn.Linear(width, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x))


@register_model(family="simple_resnet", depth=3, input_kind="image", input_shape=(1, 28, 28))
def simple_resnet(*, in_channels: int = 1, num_classes: int = 10, width: int = 64) -> SimpleResNet:
    """The lecture's SimpleResNet, fixed: projection shortcut, pooling and a linear head."""
    return SimpleResNet(in_channels=in_channels, num_classes=num_classes, width=width, skip=True)


@register_model(family="lecture_plain", depth=3, input_kind="image", input_shape=(1, 28, 28))
def lecture_plain(*, in_channels: int = 1, num_classes: int = 10, width: int = 64) -> SimpleResNet:
    """The lecture's network without the skip connection (plain twin of simple_resnet)."""
    return SimpleResNet(in_channels=in_channels, num_classes=num_classes, width=width, skip=False)


class LectureSimpleResNet(nn.Module):
    """The lecture's code example 1, verbatim, flaws included (not registered).

    In-place ``out += identity`` broadcasts the 1-channel input onto 64 channels, one
    ``ReLU`` module is used twice, and the output is ``[N, 64, H, W]`` feature maps,
    not logits. Kept as a fixture for instrumentation (in-place operations) and the
    computation graph; :class:`SimpleResNet` is the working classifier.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.relu(out)
        out = self.conv2(out)
        out += identity
        out = self.relu(out)
        return out
