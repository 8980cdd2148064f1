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


@pytest.mark.parametrize(
    "text, name, module, attr, kwargs",
    [
        ("plain56", "plain56", None, None, {}),
        ("resnet:depth=110", "resnet", None, None, {"depth": 110}),
        ("mlp:depth=4,width=8,norm=batch", "mlp", None, None, {"depth": 4, "width": 8, "norm": "batch"}),
        ("torchvision.models:resnet18", None, "torchvision.models", "resnet18", {}),
        ("pkg.nets:Outer.make:width=32,bias=False", None, "pkg.nets", "Outer.make", {"width": 32, "bias": False}),
    ],
)
def test_the_spec_grammar(text: str, name: str | None, module: str | None, attr: str | None, kwargs: dict) -> None:
    spec = parse_spec(text)
    assert (spec.name, spec.module, spec.attr, spec.kwargs) == (name, module, attr, kwargs)


def test_build_model_returns_the_registry_info_sized_for_the_input_shape() -> None:
    model, info = build_model("resnet:depth=8", input_shape=(1, 28, 28), num_classes=3)
    assert isinstance(model, CifarResNet) and model.stem.conv.in_channels == 1
    assert (info.family, info.depth, info.input_shape) == ("resnet", 8, (1, 28, 28))
    assert model.model_info is info
    model, info = build_model("mlp:depth=4,width=8", input_shape=(3, 4))
    assert model.stem.fc.in_features == 12 and info.in_features == 12
    model, info = build_model("mlp:depth=4", input_shape=(5,), in_features=7)  # a keyword wins
    assert model.stem.fc.in_features == 7


def test_keywords_given_in_code_win_over_the_spec() -> None:
    model, _ = build_model("resnet:depth=8,num_classes=3", num_classes=5)
    assert model.head.fc.out_features == 5


def test_a_callable_from_elsewhere_has_no_info() -> None:
    model, info = build_model("torch.nn:Linear:in_features=2,out_features=3")
    assert isinstance(model, nn.Linear) and info is None


def test_bad_keywords_in_a_spec_say_how_to_write_them() -> None:
    with pytest.raises(ValueError, match="write KEY=VALUE"):
        parse_spec("resnet:depth")
