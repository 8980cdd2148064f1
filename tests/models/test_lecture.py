"""The lecture's SimpleResNet (fixed), its plain twin, and the deliberately in-place model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradsight.models import SimpleResNet, create_model, residual_blocks

from .helpers import count_parameters


def test_simple_resnet_outputs_logits_not_a_feature_map() -> None:
    """The original returned a 64x28x28 map and could not be trained with cross-entropy."""
    model = create_model("simple_resnet")
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_simple_resnet_projects_the_input_instead_of_broadcasting_it() -> None:
    """The original's ``out += identity`` broadcast a 1-channel input over 64 channels."""
    model = create_model("simple_resnet")
    block = model.block
    assert isinstance(block.shortcut.conv, nn.Conv2d)
    assert block.shortcut.conv.weight.shape == (64, 1, 1, 1)
    x = torch.randn(2, 1, 28, 28)
    assert block.shortcut(x).shape == (2, 64, 28, 28)
    torch.testing.assert_close(block(x), torch.relu(block.branch(x) + block.shortcut(x)))


def test_simple_resnet_supports_full_backward_hooks() -> None:
    """The original's in-place add broke ``register_full_backward_hook``."""
    model = create_model("simple_resnet")
    fired: list[str] = []
    for name, module in model.named_modules():
        module.register_full_backward_hook(lambda m, gi, go, name=name: fired.append(name))
    model(torch.randn(2, 1, 28, 28, requires_grad=True)).sum().backward()
    assert {"block", "block.branch", "block.shortcut", "head.fc"} <= set(fired)


def test_lecture_plain_is_simple_resnet_without_the_skip() -> None:
    plain, residual = create_model("lecture_plain"), create_model("simple_resnet")
    assert isinstance(plain, SimpleResNet) and not plain.block.skip and plain.block.shortcut is None
    assert residual_blocks(residual) == [residual.block]
    assert count_parameters(residual) - count_parameters(plain) == 64  # the 1x1 projection


@pytest.mark.parametrize("name", ["simple_resnet", "lecture_plain"])
def test_lecture_models_train(name: str) -> None:
    """Loss on a fixed tiny batch falls over 20 Adam steps (lr 1e-3, as in the lecture).

    The class is coded in the image's brightness, which survives global average pooling.
    """
    model = create_model(name)
    labels = torch.arange(16) % 10
    images = torch.rand(16, 1, 28, 28) * (labels.float() + 1).view(-1, 1, 1, 1) / 10
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.95 * losses[0]


def test_inplace_resnet_really_uses_in_place_ops() -> None:
    """``inplace_resnet`` exists to exercise instrumentation against torchvision-style code."""
    model = create_model("inplace_resnet", in_channels=1)
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())
    assert residual_blocks(model, active_only=False) == []  # a "foreign" model: no block protocol
    fired: list[str] = []
    for name, module in model.named_modules():
        module.register_full_backward_hook(lambda m, gi, go, name=name: fired.append(name))
    with pytest.raises(RuntimeError, match="inplace"):
        model(torch.randn(2, 1, 28, 28, requires_grad=True)).sum().backward()
