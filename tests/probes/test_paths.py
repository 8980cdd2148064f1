"""Path lengths (Veit et al. 2016, Fig. 6): gradient along paths through k residual branches."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gradsight.cli import main
from gradsight.models import create_model, residual_blocks
from gradsight.probes import path_lengths
from gradsight.probes.paths import find_residual_blocks, path_fractions, path_gradient

from .conftest import no_hooks_left


class LinearBlock(nn.Module):
    """``x + W x``: a linear branch and an identity shortcut, in a module of its own."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.branch = nn.Linear(width, width, bias=False)
        self.shortcut = nn.Identity()
        self.skip = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) + self.shortcut(x)


class RunsTwice(nn.Module):
    """Calls the same residual block twice in one forward pass."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.block = LinearBlock(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.block(x))


def block_input_gradient(model: nn.Module, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference: the ungated gradient of <v, model(x)> at the first block's input."""
    seen = []

    def capture(_module: nn.Module, args: tuple) -> tuple:
        seen.append(args[0].detach().requires_grad_())
        return (seen[-1],)

    first = dict(model.named_modules())[find_residual_blocks(model, x)[0]]
    handle = first.register_forward_pre_hook(capture)
    try:
        output = model(x)
    finally:
        handle.remove()
    return torch.autograd.grad(output, seen[0], v)[0]


def test_linear_residual_path_gradient_is_the_product_of_its_branch_matrices() -> None:
    width, n = 5, 4
    model = nn.Sequential(*(LinearBlock(width) for _ in range(n))).double()
    x = torch.randn(3, width, dtype=torch.float64)
    v = torch.randn(3, width, dtype=torch.float64)
    for flags in itertools.product([False, True], repeat=n):
        path = torch.eye(width, dtype=torch.float64)  # y = x @ path.T along this path
        for block, through_branch in zip(model, flags):
            if through_branch:
                path = block.branch.weight @ path
        torch.testing.assert_close(path_gradient(model, x, flags, v), v @ path)
    assert no_hooks_left(model)


@pytest.mark.parametrize(
    "name, kwargs, shape",
    [
        ("resmlp", {"depth": 8, "width": 6, "in_features": 4, "norm": "batch"}, (4,)),
        ("resnet", {"depth": 8, "in_channels": 1, "shortcut": "A"}, (1, 6, 6)),  # post-add ReLU
        ("preresnet", {"depth": 8, "in_channels": 1, "shortcut": "B"}, (1, 6, 6)),  # projection
        ("inplace_resnet", {"width": 4}, (3, 6, 6)),  # torchvision-style: in-place add and ReLU
    ],
)
def test_gradients_of_all_paths_add_up_to_the_full_gradient(
    name: str, kwargs: dict, shape: tuple[int, ...]
) -> None:
    """Each block's Jacobian is J_branch + J_shortcut (times the ReLU mask in post-activation
    blocks), so the full gradient is exactly the sum over the 2**n paths."""
    model = create_model(name, **kwargs).double()
    x = torch.randn(3, *shape, dtype=torch.float64)
    v = torch.randn_like(model(x))
    n = len(find_residual_blocks(model, x))
    total = sum(
        path_gradient(model, x, flags, v) for flags in itertools.product([False, True], repeat=n)
    )
    torch.testing.assert_close(total, block_input_gradient(model, x, v))


def test_all_skip_path_of_a_residual_mlp_is_the_head_alone() -> None:
    """k = 0 on a residual MLP without post-add activation: the blocks are removed, so the
    gradient at the first block's input is v @ W_head."""
    model = create_model("resmlp", depth=10, width=8, in_features=5, num_classes=3).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    v = torch.randn(4, 3, dtype=torch.float64)
    grad = path_gradient(model, x, [False] * 4, v)
    torch.testing.assert_close(grad, v @ model.head.fc.weight)


def test_path_fractions_are_the_binomial_distribution() -> None:
    fractions = path_fractions(54)
    assert fractions.shape == (55,)
    assert math.isclose(float(fractions.sum()), 1.0, rel_tol=1e-12)
    assert math.isclose(float(fractions[27]), math.comb(54, 27) / 2**54)


def test_gradient_per_path_length_peaks_at_an_intermediate_length_in_54_blocks() -> None:
    """Veit et al.: in ResNet-110 (54 blocks) most gradient comes from paths of length 5-17.

    Measured on a 54-block batch-norm residual MLP (width 16, training mode), seeds 0..4 with 2
    samples per length: peak k 12..16, mean k 12.4..14.3, central 90% from k = 9 to 17..20; one
    path's gradient shrinks about 3x per branch (1.3 at k = 0, ~1e-13 at k = 27, ~1e-26 at 54).
    ResNet-110 at initialization (docs/instruments/paths.md): peak 19, mean 17.8.
    """
    model = create_model("resmlp", depth=110, width=16, in_features=8, num_classes=4, norm="batch")
    result = path_lengths(model, samples=2, seed=0)
    assert result.n_blocks == 54 and result.magnitudes.shape == (55, 2)
    assert 4 <= result.peak_length <= 24
    assert 6 <= result.mean_length <= 24
    first, last = result.effective_range(0.9)
    assert 0 < first < result.peak_length < last < 54
    assert result.magnitude[0] > result.magnitude[27] * 1e3 > result.magnitude[54] * 1e6
    assert no_hooks_left(model)


def test_model_state_is_left_as_it_was() -> None:
    model = create_model("resnet20", in_channels=1)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    result = path_lengths(model, samples=1, input_shape=(1, 6, 6), batch_size=2)
    assert result.n_blocks == 9 and model.training
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name]), name
    assert all(p.grad is None for p in model.parameters())
    assert no_hooks_left(model)


def test_hooks_are_removed_when_a_block_runs_twice_per_forward() -> None:
    model = RunsTwice(3)
    with pytest.raises(ValueError, match="must run once per forward pass; in this model block ran 2 times"):
        path_lengths(model, samples=1, input_shape=(3,))
    assert no_hooks_left(model)


@pytest.mark.parametrize(
    "model",
    [create_model("mlp", depth=4, width=8), nn.Sequential(nn.Linear(784, 4), nn.ReLU(), nn.Linear(4, 2))],
    ids=["plain_mlp", "foreign_plain_model"],
)
def test_models_without_residual_blocks_are_rejected(model: nn.Module) -> None:
    with pytest.raises(ValueError, match="no active residual blocks"):
        path_lengths(model, input_shape=(784,))


@pytest.mark.parametrize("name", ["resnet20", "preresnet20", "resmlp", "simple_resnet", "plain20"])
def test_blocks_found_in_the_autograd_graph_are_the_zoos_residual_blocks(name: str) -> None:
    model = create_model(name)
    names = {id(m): n for n, m in model.named_modules()}
    x = model.model_info.example_input(2)
    assert find_residual_blocks(model, x) == [names[id(b)] for b in residual_blocks(model)]


def test_a_container_of_one_block_is_that_block() -> None:
    model = create_model("resmlp", depth=4, width=8, in_features=3)  # body holds one block
    assert find_residual_blocks(model, torch.randn(2, 3)) == ["body.block0"]


def test_a_block_nested_in_a_block_is_not_counted_twice() -> None:
    outer = LinearBlock(3)
    outer.branch = nn.Sequential(LinearBlock(3), nn.Linear(3, 3))  # a block inside the branch
    model = nn.Sequential(outer, LinearBlock(3))
    assert find_residual_blocks(model, torch.randn(2, 3)) == ["0", "1"]


def test_path_lengths_of_torchvision_resnet18() -> None:
    """A model from outside the zoo: blocks are found from the graph, with torchvision's
    in-place ``out += identity``, ``ReLU(inplace=True)`` and downsampling projections."""
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    blocks = find_residual_blocks(model, x)
    assert blocks == [f"layer{s}.{b}" for s in (1, 2, 3, 4) for b in (0, 1)]
    result = path_lengths(model, x, samples=1)
    assert result.n_blocks == 8 and torch.isfinite(result.magnitudes).all()
    assert result.magnitude[0] > 0 and result.magnitude[8] > 0
    assert no_hooks_left(model) and all(p.grad is None for p in model.parameters())


def test_wrong_number_of_flags_is_rejected() -> None:
    model = nn.Sequential(LinearBlock(3), LinearBlock(3))
    with pytest.raises(ValueError, match="3 flags for 2 residual blocks"):
        path_gradient(model, torch.randn(1, 3), [True, True, False])
    assert no_hooks_left(model)


def test_cli_builds_a_registry_model_for_the_input_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "paths.png"
    argv = ["paths", "resnet20", "--input-shape", "1,6,6", "--samples", "1", "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "9 residual blocks" in printed and "peaks at k =" in printed
    assert out.stat().st_size > 0


def test_cli_passes_model_arguments(capsys: pytest.CaptureFixture) -> None:
    argv = ["paths", "resmlp", "--arg", "depth=6", "--arg", "width=4", "--arg", "in_features=3",
            "--arg", "norm=batch", "--samples", "1"]  # fmt: skip
    assert main(argv) == 0
    assert "2 residual blocks" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["paths", "resnet21"], "unknown model 'resnet21'"),
        (["paths", "mlp"], "no active residual blocks"),
        (["paths", "resmlp", "--arg", "nope=1"], "cannot build"),
        (["paths", "resmlp", "--input-shape", "1,x"], "--input-shape"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_every_addition_of_a_transformer_is_a_block_and_all_paths_add_up() -> None:
    """A pre-LN transformer: two additions per layer; the 2**n gated paths sum to the gradient
    at the first layer's input."""
    from tests.instrument.test_residual_additions import TinyGPT

    model = TinyGPT(depth=2, width=8, heads=2).double()
    idx = torch.randint(0, 50, (2, 8))
    blocks = find_residual_blocks(model, idx)
    assert blocks == [f"blocks.{i}[{b}]" for i in range(2) for b in ("attn", "mlp")]
    v = torch.randn_like(model(idx))
    seen = []

    def capture(_module: nn.Module, args: tuple) -> tuple:
        seen.append(args[0].detach().requires_grad_())
        return (seen[-1],)

    handle = model.blocks[0].register_forward_pre_hook(capture)
    try:
        want = torch.autograd.grad(model(idx), seen[0], v)[0]
    finally:
        handle.remove()
    total = sum(path_gradient(model, idx, flags, v) for flags in itertools.product([False, True], repeat=4))
    torch.testing.assert_close(total, want)
    assert no_hooks_left(model)
