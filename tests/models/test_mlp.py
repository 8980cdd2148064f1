"""Deep plain and residual MLPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradsight.models import MLP, MLPBlock, create_model, residual_blocks

from .helpers import count_parameters


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("depth, width", [(2, 8), (4, 32), (10, 256), (20, 64)])
def test_parameter_count_and_plain_residual_twins(depth: int, width: int) -> None:
    n = (depth - 2) // 2
    expected = (784 * width + width) + n * 2 * (width * width + width) + (width * 10 + 10)
    plain = create_model("mlp", depth=depth, width=width)
    residual = create_model("resmlp", depth=depth, width=width)
    assert count_parameters(plain) == count_parameters(residual) == expected
    assert len(linear_layers(plain)) == depth


@pytest.mark.parametrize("depth", [0, 1, 3, 11, 4.0, True])
def test_invalid_depth_raises_value_error(depth: object) -> None:
    with pytest.raises(ValueError, match=r"2n\+2"):
        MLP(depth=depth)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "keyword, value", [("activation", "swish"), ("init", "orthogonal"), ("norm", "group")]
)
def test_invalid_choices_raise_value_error(keyword: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{keyword} must be one of"):
        MLP(**{keyword: value})


def test_plain_mlp_matches_a_loop_over_linear_layers() -> None:
    model = create_model("mlp", depth=6, width=16, in_features=12, bias=True)
    x = torch.randn(3, 3, 2, 2)
    h = x.flatten(1)
    layers = linear_layers(model)
    for layer in layers[:-1]:
        h = torch.relu(h @ layer.weight.T + layer.bias)
    reference = h @ layers[-1].weight.T + layers[-1].bias
    torch.testing.assert_close(model(x), reference)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu", "linear"])
def test_residual_mlp_matches_x_plus_w2_act_w1_x(activation: str) -> None:
    act = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
           "gelu": nn.functional.gelu, "linear": lambda t: t}[activation]  # fmt: skip
    model = create_model(
        "resmlp", depth=8, width=16, in_features=20, activation=activation, bias=False
    )
    x = torch.randn(4, 20)
    h = act(x @ model.stem.fc.weight.T)
    for block in model.body:
        h = h + act(h @ block.branch.fc1.weight.T) @ block.branch.fc2.weight.T
    torch.testing.assert_close(model(x), h @ model.head.fc.weight.T)


def test_blocks_follow_the_protocol() -> None:
    residual = create_model("resmlp", depth=6, width=8)
    plain = create_model("mlp", depth=6, width=8)
    assert len(residual_blocks(residual)) == 2 and residual_blocks(plain) == []
    for block in residual_blocks(residual):
        assert (
            isinstance(block, MLPBlock) and block.skip and isinstance(block.shortcut, nn.Identity)
        )
        assert list(block.branch._modules) == ["fc1", "act", "fc2"]
    for block in residual_blocks(plain, active_only=False):
        assert not block.skip and block.shortcut is None
    names = [n for n, _ in residual.named_parameters()]
    assert names[:2] == ["stem.fc.weight", "stem.fc.bias"]
    assert "body.block1.branch.fc2.weight" in names and names[-1] == "head.fc.bias"


@pytest.mark.parametrize("norm, layer", [("layer", nn.LayerNorm), ("batch", nn.BatchNorm1d)])
def test_norm_layers_follow_every_hidden_linear_layer(norm: str, layer: type) -> None:
    model = create_model("resmlp", depth=6, width=8, norm=norm)
    assert sum(isinstance(m, layer) for m in model.modules()) == 5
    assert list(model.body.block0.branch._modules) == ["fc1", "norm1", "act", "fc2", "norm2"]
    assert model(torch.randn(4, 784)).shape == (4, 10)


def test_any_input_shape_is_flattened() -> None:
    model = create_model("mlp", depth=4, width=8, in_features=3 * 32 * 32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model(torch.randn(2, 3072)).shape == (2, 10)


def test_theory_plain_relu_mlp_recipe() -> None:
    """Plain ReLU MLP, width 512, 20 layers, weights N(0, 1/fan_in), no bias."""
    model = create_model("mlp20_lecun_nobias")
    layers = linear_layers(model)
    assert len(layers) == 20 and all(layer.bias is None for layer in layers)
    assert all(layer.out_features == 512 for layer in layers[:-1])
    assert not any(isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)) for m in model.modules())
    hidden = torch.cat([layer.weight.flatten() for layer in layers[1:-1]])
    assert hidden.std().item() == pytest.approx(512**-0.5, rel=0.01)
    assert layers[0].weight.std().item() == pytest.approx(784**-0.5, rel=0.02)


def test_theory_residual_mlp_recipe() -> None:
    """Unnormalized residual MLP x + W2 relu(W1 x), He init, no bias."""
    model = create_model("resmlp20_he_nobias")
    layers = linear_layers(model)
    assert all(layer.bias is None for layer in layers)
    assert len(residual_blocks(model)) == 9
    hidden = torch.cat([layer.weight.flatten() for layer in layers[1:-1]])
    assert hidden.std().item() == pytest.approx((2 / 512) ** 0.5, rel=0.01)


def test_normal_init_uses_a_fixed_std() -> None:
    model = create_model("mlp", depth=4, width=256, init="normal", init_std=0.05)
    weights = torch.cat([layer.weight.flatten() for layer in linear_layers(model)])
    assert weights.std().item() == pytest.approx(0.05, rel=0.01)


def test_fixup_zeroes_fc2_and_classifier_and_scales_fc1() -> None:
    model = create_model("resmlp", depth=20, width=128, init="fixup")
    he = create_model("resmlp", depth=20, width=128, init="he")
    blocks = residual_blocks(model)
    assert all((b.branch.fc2.weight == 0).all() and (b.branch.fc2.bias == 0).all() for b in blocks)
    assert (model.head.fc.weight == 0).all()
    fc1 = torch.cat([b.branch.fc1.weight.flatten() for b in blocks])
    fc1_he = torch.cat([b.branch.fc1.weight.flatten() for b in residual_blocks(he)])
    assert fc1.std().item() / fc1_he.std().item() == pytest.approx(9**-0.5, rel=0.02)
    with pytest.raises(ValueError, match="fixup"):
        create_model("mlp", init="fixup")
