"""The registry, and forward + backward through every registered model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradsight.models import (
    _registry,
    create_model,
    is_model,
    list_models,
    model_info,
    register_model,
)

from .helpers import input_kwargs

REQUIRED = [
    "plain20", "plain32", "plain44", "plain56", "plain110",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "preresnet20", "preresnet56", "plain", "resnet", "mlp", "resmlp",
    "simple_resnet", "lecture_plain", "inplace_resnet",
]  # fmt: skip


def test_required_models_are_registered() -> None:
    assert set(REQUIRED) <= set(list_models())
    assert all(is_model(name) for name in REQUIRED)
    assert not is_model("resnet21")


def test_list_models_is_sorted_and_filters_with_fnmatch() -> None:
    names = list_models()
    assert names == sorted(names)
    assert list_models("resnet*") == [
        "resnet",
        "resnet110",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
    ]
    assert list_models("plain??") == ["plain20", "plain32", "plain44", "plain56"]
    assert list_models("RESNET2?") == ["resnet20"]
    assert list_models("no_such_model*") == []


def test_unknown_name_raises_value_error_listing_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet21'") as info:
        create_model("resnet21")
    message = str(info.value)
    assert "Did you mean" in message
    assert all(name in message for name in list_models())


def test_unknown_keyword_raises_type_error() -> None:
    with pytest.raises(TypeError):
        create_model("resnet20", widht=3)


def test_model_info_gives_a_summary_for_every_model() -> None:
    for name in list_models():
        info = model_info(name)
        assert info.name == name
        assert info.summary, f"{name} has no docstring"
        assert info.module.startswith("gradsight.models.")


def test_registering_a_taken_name_from_another_function_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_registry, "_model_entrypoints", dict(_registry._model_entrypoints))

    def resnet20(**kwargs: object) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet20)

    def tiny_test_model(**kwargs: object) -> nn.Module:
        """A test model."""
        return nn.Linear(2, 2)

    assert register_model(tiny_test_model) is tiny_test_model
    assert register_model(tiny_test_model) is tiny_test_model  # same function again: replaced
    assert "tiny_test_model" in list_models("tiny*")


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_gives_every_parameter_a_finite_gradient(name: str) -> None:
    model = create_model(name, **input_kwargs(name, channels=1, size=28))
    x = torch.randn(2, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (2, 10)
    nn.functional.cross_entropy(logits, torch.tensor([3, 7])).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{name}: {param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: {param_name} has a non-finite gradient"


@pytest.mark.parametrize("name", list_models())
def test_every_model_takes_rgb_input_and_num_classes(name: str) -> None:
    model = create_model(name, num_classes=7, **input_kwargs(name, channels=3, size=32)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", [n for n in list_models() if n != "inplace_resnet"])
def test_zoo_models_have_no_in_place_ops_and_support_full_backward_hooks(name: str) -> None:
    """Out-of-place adds and ReLUs: ``register_full_backward_hook`` works on every module."""
    model = create_model(name, **input_kwargs(name, channels=1, size=28))
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    fired: list[str] = []
    for module_name, module in model.named_modules():
        module.register_full_backward_hook(lambda m, gi, go, n=module_name: fired.append(n))
    model(torch.randn(2, 1, 28, 28, requires_grad=True)).sum().backward()
    with_parameters = {n for n, m in model.named_modules() if list(m.parameters(recurse=False))}
    assert "" in fired
    assert with_parameters <= set(fired)
