"""Model specs: a registered name or ``package.module:factory``, with optional KEY=VALUE keywords."""

from __future__ import annotations

import pytest
from torch import nn

from gradsight.models import MLP, CifarResNet
from gradsight.models.spec import build_model, load_model, parse_spec


def test_registry_name_passes_keywords_to_the_factory() -> None:
    model = load_model("resnet20", in_channels=1, num_classes=3)
    assert isinstance(model, CifarResNet) and model.depth == 20
    assert model.stem.conv.in_channels == 1 and model.head.fc.out_features == 3


def test_module_factory_function_and_class() -> None:
    assert isinstance(load_model("gradsight.models:create_model", name="mlp", depth=4), MLP)
    model = load_model("torch.nn:Linear", in_features=2, out_features=3)
    assert isinstance(model, nn.Linear) and model.weight.shape == (3, 2)


def test_dotted_attribute_after_the_colon() -> None:
    assert isinstance(load_model("torch:nn.Identity"), nn.Identity)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("resnet21", "Did you mean 'resnet32', 'resnet20'"),
        ("", "empty model spec"),
        ("no_such_package.models:build", "cannot import 'no_such_package.models'"),
        ("gradsight.models:no_such_factory", "has no attribute 'no_such_factory'"),
        ("gradsight.models:INIT_SCHEMES", "is not callable"),
        (":resnet20", "malformed"),
    ],
)
def test_errors_are_value_errors_naming_the_registered_models(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        load_model(spec)
    assert "resnet110" in str(info.value) and "package.module:factory" in str(info.value)


def test_factory_that_returns_no_module_is_rejected() -> None:
    with pytest.raises(ValueError, match="returned list, not an nn.Module"):
        load_model("gradsight.models:list_models")


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        load_model("resnet20", no_such_keyword=1)
