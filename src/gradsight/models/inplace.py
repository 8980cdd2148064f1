"""A tiny torchvision-style ResNet with in-place operations, kept on purpose.

torchvision's ``BasicBlock`` writes ``out += identity`` and uses ``nn.ReLU(inplace=True)``, one
ReLU module called twice per block. Both break ``register_full_backward_hook`` and can trip
instrumentation that keeps references to activations. ``inplace_resnet`` reproduces those
patterns in a network small enough for tests, so the instrumentation can be checked against
the kind of model users bring. It deliberately does not subclass the zoo's ``ResidualBlock`` (no
``branch`` / ``shortcut`` / ``skip``): it stands for a foreign model, whose blocks are found in
the autograd graph.
"""

from __future__ import annotations

import torch
from torch import nn

from gradsight.models._registry import register_model

__all__ = ["InplaceBasicBlock", "InplaceResNet"]


class InplaceBasicBlock(nn.Module):
    """torchvision's ``BasicBlock``, verbatim in structure: in-place add and in-place ReLU.

    Shapes: (N, in_planes, H, W) -> (N, planes, ceil(H/stride), ceil(W/stride)).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity  # in place on purpose: this model exists to exercise in-place ops
        out = self.relu(out)
        return out


class InplaceResNet(nn.Module):
    """conv3x3 + BN + ReLU(inplace), two in-place basic blocks (16 -> 32 channels, stride 2),
    average pooling and a linear head.

    Input (N, in_channels, H, W); output logits (N, num_classes).
    """

    def __init__(self, *, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(InplaceBasicBlock(width, width))
        self.layer2 = nn.Sequential(InplaceBasicBlock(width, 2 * width, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model(family="inplace_resnet", depth=6, input_kind="image", input_shape=(3, 32, 32))
def inplace_resnet(
    *, in_channels: int = 3, num_classes: int = 10, width: int = 16
) -> InplaceResNet:
    """Tiny torchvision-style ResNet with `out += identity` and ReLU(inplace=True), on purpose."""
    return InplaceResNet(in_channels=in_channels, num_classes=num_classes, width=width)
