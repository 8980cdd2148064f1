"""gradsight's model zoo: plain and residual networks to watch gradients flow through.

    >>> from gradsight.models import create_model, list_models
    >>> list_models("resnet*")
    ['resnet', 'resnet110', 'resnet20', 'resnet32', 'resnet44', 'resnet56']
    >>> model = create_model("resnet20", in_channels=1)  # MNIST-sized input

Blocks follow one protocol (``ResidualBlock``): class attribute ``is_residual_block = True``
and instance attributes ``branch``, ``shortcut`` (``None`` when off), ``skip`` and ``post_act``;
``residual_blocks(model)`` finds them.
"""

from gradsight.models._blocks import ResidualBlock, residual_blocks
from gradsight.models._init import INIT_SCHEMES
from gradsight.models._registry import (
    ModelInfo,
    create_model,
    is_model,
    list_models,
    model_info,
    register_model,
)
from gradsight.models.cifar_resnet import (
    BasicBlock,
    CifarResNet,
    PadShortcut,
    PreActBlock,
    blocks_per_stage,
)
from gradsight.models.inplace import InplaceResNet
from gradsight.models.lecture import LectureBlock, LectureSimpleResNet, SimpleResNet
from gradsight.models.mlp import MLP, MLPBlock

__all__ = [
    "INIT_SCHEMES",
    "MLP",
    "BasicBlock",
    "CifarResNet",
    "InplaceResNet",
    "LectureBlock",
    "LectureSimpleResNet",
    "MLPBlock",
    "ModelInfo",
    "PadShortcut",
    "PreActBlock",
    "ResidualBlock",
    "SimpleResNet",
    "blocks_per_stage",
    "create_model",
    "is_model",
    "list_models",
    "model_info",
    "register_model",
    "residual_blocks",
]
