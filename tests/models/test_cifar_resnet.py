"""CIFAR-style plain / residual / pre-activation CNNs of depth 6n+2."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradsight.models import (
    BasicBlock,
    CifarResNet,
    PadShortcut,
    PreActBlock,
    ResidualBlock,
    blocks_per_stage,
    create_model,
    residual_blocks,
)

from .helpers import count_parameters

# He et al. 2016a, Table 6 (0.27M / 0.85M / 1.7M), exactly: 97,216 n - 21,926 for depth 6n + 2.
RESNET_PARAMETERS = {20: 269_722, 56: 853_018, 110: 1_727_962}


@pytest.mark.parametrize("depth", sorted(RESNET_PARAMETERS))
def test_resnet_parameter_count_matches_he_et_al(depth: int) -> None:
    n = (depth - 2) // 6
    model = create_model(f"resnet{depth}", shortcut="A", in_channels=3, num_classes=10)
    assert count_parameters(model) == RESNET_PARAMETERS[depth] == 97_216 * n - 21_926


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_plain_and_residual_twins_have_identical_parameters(depth: int, in_channels: int) -> None:
    plain = create_model(f"plain{depth}", in_channels=in_channels)
    residual = create_model(f"resnet{depth}", in_channels=in_channels)
    assert count_parameters(plain) == count_parameters(residual)
    plain_shapes = [(n, p.shape) for n, p in plain.named_parameters()]
    assert plain_shapes == [(n, p.shape) for n, p in residual.named_parameters()]


def test_one_input_channel_removes_two_stem_filters_worth_of_weights() -> None:
    assert count_parameters(create_model("resnet20", in_channels=1)) == 269_722 - 2 * 16 * 9


def test_shortcut_b_adds_projections_only_where_the_shape_changes() -> None:
    model = create_model("resnet20", shortcut="B")
    projected = {n for n, _ in model.named_parameters() if ".shortcut." in n}
    assert projected == {
        f"stage{s}.block0.shortcut.{layer}.{p}"
        for s in (2, 3)
        for layer, p in [("conv", "weight"), ("bn", "weight"), ("bn", "bias")]
    }
    extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert count_parameters(model) == 269_722 + extra


@pytest.mark.parametrize("depth", [0, 2, 7, 19, 21, 57, 20.0, True])
def test_invalid_depth_raises_value_error_naming_valid_depths(depth: object) -> None:
    with pytest.raises(ValueError, match=r"6n\+2.*20, 32, 44, 56, 110"):
        CifarResNet(depth=depth)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="6n"):
        create_model("plain", depth=depth)


def test_blocks_per_stage() -> None:
    assert [blocks_per_stage(d) for d in (8, 20, 56, 110)] == [1, 3, 9, 18]


@pytest.mark.parametrize(
    "keyword, value", [("shortcut", "C"), ("norm", "group"), ("init", "orthogonal")]
)
def test_invalid_choices_raise_value_error(keyword: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{keyword} must be one of"):
        CifarResNet(**{keyword: value})


@pytest.mark.parametrize("name", ["plain20", "resnet20", "preresnet20"])
@pytest.mark.parametrize("shortcut", ["A", "B"])
@pytest.mark.parametrize("norm", ["batch", "none"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_forward_shapes(name: str, shortcut: str, norm: str, shape: tuple[int, int, int]) -> None:
    model = create_model(name, in_channels=shape[0], shortcut=shortcut, norm=norm, num_classes=10)
    features: dict[str, torch.Size] = {}
    for stage in ("stage1", "stage2", "stage3"):
        getattr(model, stage).register_forward_hook(
            lambda m, i, o, stage=stage: features.__setitem__(stage, o.shape)
        )
    assert model(torch.randn(2, *shape)).shape == (2, 10)
    size = shape[1]
    half, quarter = (size + 1) // 2, (size + 3) // 4  # 28 -> 14 -> 7, 32 -> 16 -> 8
    assert features == {
        "stage1": (2, 16, size, size),
        "stage2": (2, 32, half, half),
        "stage3": (2, 64, quarter, quarter),
    }


def test_parameter_names_read_like_paths() -> None:
    names = [n for n, _ in create_model("resnet20", shortcut="B").named_parameters()]
    for expected in [
        "stem.conv.weight",
        "stem.bn.weight",
        "stage1.block0.branch.conv1.weight",
        "stage1.block0.branch.bn1.weight",
        "stage1.block0.branch.conv2.weight",
        "stage1.block0.branch.bn2.bias",
        "stage3.block2.branch.conv2.weight",
        "stage2.block0.shortcut.conv.weight",
        "head.fc.weight",
        "head.fc.bias",
    ]:
        assert expected in names
    assert names[0] == "stem.conv.weight" and names[-1] == "head.fc.bias"


def test_pad_shortcut_is_parameter_free_and_zero_pads_a_subsampled_input() -> None:
    shortcut = PadShortcut(16, 32, stride=2)
    assert list(shortcut.parameters()) == []
    x = torch.randn(2, 16, 7, 7)
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2], rtol=0, atol=0)
    assert (out[:, :8] == 0).all() and (out[:, 24:] == 0).all()


def test_shortcut_a_places_pad_shortcuts_at_stage_transitions_only() -> None:
    model = create_model("resnet20")
    kinds = {
        name: type(block.shortcut)
        for name, block in model.named_modules()
        if isinstance(block, BasicBlock)
    }
    assert kinds.pop("stage2.block0") is PadShortcut
    assert kinds.pop("stage3.block0") is PadShortcut
    assert set(kinds.values()) == {nn.Identity}
    assert not any(".shortcut." in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("block_class", [BasicBlock, PreActBlock])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_blocks_compute_branch_plus_shortcut_out_of_place(block_class: type, shortcut: str) -> None:
    block = block_class(16, 32, stride=2, shortcut=shortcut).eval()
    x = torch.randn(2, 16, 9, 9)
    expected = block.branch(x) + block.shortcut(x)
    if block_class is BasicBlock:
        expected = torch.relu(expected)
    torch.testing.assert_close(block(x), expected)


def test_plain_blocks_have_no_shortcut_and_no_addition() -> None:
    model = create_model("plain20").eval()
    blocks = residual_blocks(model, active_only=False)
    assert len(blocks) == 9 and residual_blocks(model) == []
    assert all(b.shortcut is None and not b.skip for b in blocks)
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(blocks[0](x), torch.relu(blocks[0].branch(x)))


def test_a_residual_block_needs_a_shortcut() -> None:
    with pytest.raises(ValueError, match="shortcut"):
        ResidualBlock(nn.Linear(2, 2), None, skip=True)
    plain = ResidualBlock(nn.Linear(2, 2), nn.Identity(), skip=False)
    assert plain.shortcut is None and "shortcut" not in dict(plain.named_children())


def test_residual_blocks_are_found_in_forward_order() -> None:
    model = create_model("resnet20")
    names = {id(m): n for n, m in model.named_modules()}
    assert [names[id(b)] for b in residual_blocks(model)] == [
        f"stage{s}.block{i}" for s in (1, 2, 3) for i in range(3)
    ]
    assert all(isinstance(b, ResidualBlock) for b in residual_blocks(model))


def test_norm_none_drops_batch_norm_and_gives_convs_biases() -> None:
    model = create_model("resnet20", norm="none", shortcut="B")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is not None for c in convs)
    assert all((c.bias == 0).all() for c in convs)


def test_batch_norm_convs_have_no_bias() -> None:
    assert all(
        m.bias is None for m in create_model("resnet20").modules() if isinstance(m, nn.Conv2d)
    )


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_fixup_zeroes_last_branch_layers_and_classifier_and_scales_the_rest(norm: str) -> None:
    model = create_model("resnet56", init="fixup", norm=norm)
    he = create_model("resnet56", init="he", norm=norm)
    blocks = residual_blocks(model)
    assert len(blocks) == 27
    for block in blocks:
        conv2 = block.branch.conv2
        assert (conv2.weight == 0).all()
        assert conv2.bias is None or (conv2.bias == 0).all()
    assert (model.head.fc.weight == 0).all() and (model.head.fc.bias == 0).all()
    # Zhang et al. 2019: branch layers other than the last are scaled by L^(-1/(2m-2)), m = 2.
    scaled = torch.cat([b.branch.conv1.weight.flatten() for b in blocks])
    reference = torch.cat([b.branch.conv1.weight.flatten() for b in residual_blocks(he)])
    assert scaled.std().item() / reference.std().item() == pytest.approx(27**-0.5, rel=0.05)
    # The stem is plain He.
    assert model.stem.conv.weight.std().item() == pytest.approx((2 / 27) ** 0.5, rel=0.2)


def test_fixup_network_is_the_identity_through_every_block_at_init() -> None:
    model = create_model("resnet20", init="fixup", norm="none").eval()
    x = torch.randn(2, 16, 8, 8)
    block = model.stage1.block1
    torch.testing.assert_close(block(torch.relu(x)), torch.relu(x))
    assert (model(torch.randn(2, 3, 32, 32)) == 0).all()


def test_fixup_on_a_plain_network_raises() -> None:
    with pytest.raises(ValueError, match="fixup"):
        create_model("plain20", init="fixup")


@pytest.mark.parametrize(
    "init, expected_std",
    # stage1 convs are 16 -> 16 channels, 3x3: fan_in = fan_out = 144
    [("he", (2 / 144) ** 0.5), ("lecun", (1 / 144) ** 0.5), ("xavier", (2 / (144 + 144)) ** 0.5)],
)
def test_init_schemes_set_weight_scale(init: str, expected_std: float) -> None:
    model = create_model("resnet110", init=init)
    weights = torch.cat([b.branch.conv1.weight.flatten() for b in model.stage1])
    assert weights.std().item() == pytest.approx(expected_std, rel=0.03)


def test_preact_structure() -> None:
    model = create_model("preresnet20")
    blocks = residual_blocks(model)
    assert len(blocks) == 9 and all(isinstance(b, PreActBlock) for b in blocks)
    assert list(model.stem._modules) == ["conv"]
    assert list(model.head._modules) == ["bn", "relu", "pool", "flatten", "fc"]
    assert list(blocks[0].branch._modules) == ["bn1", "relu1", "conv1", "bn2", "relu2", "conv2"]
    # BN-ReLU come before each conv, so bn1 normalizes the block's input channels.
    assert model.stage2.block0.branch.bn1.num_features == 16
    assert model.stage2.block0.branch.bn2.num_features == 32
    assert blocks[0].post_act is None  # nothing after the addition
    block = model.stage1.block1.eval()
    x = torch.randn(2, 16, 8, 8)
    out = block(x)
    torch.testing.assert_close(out, block.branch(x) + x)
    assert (out < 0).any()


def test_preact_shortcut_b_projects_with_a_conv_alone() -> None:
    model = create_model("preresnet20", shortcut="B")
    assert list(model.stage2.block0.shortcut._modules) == ["conv"]
