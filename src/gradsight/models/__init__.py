"""gradsight's model zoo: plain and residual networks to watch gradients flow through.

    >>> from gradsight.models import create_model, list_models
    >>> list_models("resnet*")
    ['resnet', 'resnet110', 'resnet20', 'resnet32', 'resnet44', 'resnet56']
    >>> model = create_model("resnet20", in_channels=1)  # MNIST-sized input
    >>> model_info("resnet", depth=56).depth, model.model_info.input_shape
    (56, (1, 32, 32))
    >>> model, info = build_model("resnet:depth=110")   # a model spec, as the CLI takes it

Each registration says the model's family, depth and input (``ModelInfo``); ``create_model``
records it on the model (``info_of(model)``); ``sample_input(model, batch_size)`` draws a batch
the model takes (the registry's input, or ``input_shape=``).

The zoo's blocks subclass ``ResidualBlock`` (attributes ``branch``, ``shortcut`` (``None`` when
off), ``skip`` and ``post_act``); ``residual_blocks(model)`` lists them.
"""

from gradsight.models._blocks import ResidualBlock, residual_blocks
from gradsight.models._init import INIT_SCHEMES
from gradsight.models._registry import create_model, is_model, list_models, model_info, register_model
from gradsight.models.cifar_resnet import (
    BasicBlock,
    CifarResNet,
    PadShortcut,
    PreActBlock,
    blocks_per_stage,
)
from gradsight.models.gpt import GPT, GPTConfig
from gradsight.models.info import (
    INPUT_KINDS,
    InputSpec,
    ModelInfo,
    UnknownInputError,
    info_of,
    input_spec,
    sample_input,
)
from gradsight.models.inplace import InplaceResNet
from gradsight.models.lecture import LectureBlock, LectureSimpleResNet, SimpleResNet
from gradsight.models.mlp import MLP, MLPBlock
from gradsight.models.spec import ModelSpec, build_model, load_model, parse_spec
from gradsight.models.tokens import TokenMLP

__all__ = [
    "INIT_SCHEMES",
    "INPUT_KINDS",
    "MLP",
    "BasicBlock",
    "CifarResNet",
    "GPT",
    "GPTConfig",
    "InplaceResNet",
    "InputSpec",
    "LectureBlock",
    "LectureSimpleResNet",
    "MLPBlock",
    "ModelInfo",
    "ModelSpec",
    "PadShortcut",
    "PreActBlock",
    "ResidualBlock",
    "SimpleResNet",
    "TokenMLP",
    "UnknownInputError",
    "blocks_per_stage",
    "build_model",
    "create_model",
    "info_of",
    "input_spec",
    "is_model",
    "list_models",
    "load_model",
    "model_info",
    "parse_spec",
    "register_model",
    "residual_blocks",
    "sample_input",
]
