"""gs.probe against signal-propagation theory (averaged over seeds so they never flake)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.probes.probe import probe


def test_plain_relu_mlp_backward_halves_squared_gradient_per_layer():
    """Width 512, 20 layers, N(0, 1/fan_in), no bias: E||dL/dh_{l-1}||^2 = 0.5 E||dL/dh_l||^2.

    Each step back multiplies by W^T (variance 1/n, n inputs: preserves the squared
    norm in expectation) and by the ReLU mask (keeps half of it).
    """
    ratios = []
    for seed in range(6):
        torch.manual_seed(seed)
        model = gs.models.create_model("mlp20_lecun_nobias")
        table = probe(model, input_shape=(784,), batch_size=64, seed=seed)
        layers = table[table.kind == "layer"].sort_values("depth")
        assert len(layers) == 20
        g2 = layers.out_grad_norm.to_numpy() ** 2
        ratios.append(g2[:-1] / g2[1:])  # going backward: layer l-1 over layer l
    hidden = np.asarray(ratios)[:, 1:-1]  # square hidden layers (not the 784-in and 10-out ones)
    assert abs(hidden.mean() - 0.5) < 0.5 * 0.03
    assert np.all(np.abs(hidden.mean(axis=0) - 0.5) < 0.05)


class _ResBlock(nn.Module):
    """``x + W2 relu(W1 x)``: found as a residual block from the autograd graph alone."""

    def __init__(self, width: int, last_gain: float):
        super().__init__()
        self.fc1 = nn.Linear(width, width, bias=False)
        self.fc2 = nn.Linear(width, width, bias=False)
        nn.init.normal_(self.fc1.weight, std=math.sqrt(2.0 / width))  # He: the layer feeds a ReLU
        nn.init.normal_(self.fc2.weight, std=math.sqrt(last_gain / width))

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


def _stream_growth(last_gain: float, blocks: int = 8, width: int = 512, seeds: int = 4) -> float:
    growth = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = nn.Sequential(*[_ResBlock(width, last_gain) for _ in range(blocks)])
        table = probe(model, input_shape=(width,), batch_size=256, seed=seed)
        rows = table[table.kind == "block"].sort_values("depth")
        assert len(rows) == blocks
        second_moment = rows.act_rms.to_numpy() ** 2
        growth.append(second_moment[1:] / second_moment[:-1])
    return float(np.mean(growth))


def test_unnormalized_residual_stream_variance_doubles_per_block():
    """x + W2 relu(W1 x) with a variance-preserving branch (He W1 feeding the ReLU,
    W2 ~ N(0, 1/n)): Var(x + f(x)) = Var(x) + Var(f(x)) = 2 Var(x) (Brock et al. 2021)."""
    assert _stream_growth(last_gain=1.0) == pytest.approx(2.0, rel=0.04)


def test_residual_stream_triples_when_both_branch_layers_use_he_init():
    """With He init on W2 as well, the branch doubles its input's second moment, so the
    stream grows by 1 + 2 = 3 per block: the registered resmlp20_he_nobias does this."""
    assert _stream_growth(last_gain=2.0) == pytest.approx(3.0, rel=0.04)


def test_probe_returns_rows_in_depth_order_and_restores_grads():
    torch.manual_seed(0)
    model = gs.models.create_model("resnet20", in_channels=1)
    model.stem.conv.weight.grad = torch.ones_like(model.stem.conv.weight)
    before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    table = probe(model, input_shape=(1, 28, 28), batch_size=8)
    assert torch.equal(model.stem.conv.weight.grad, torch.ones_like(model.stem.conv.weight))
    assert model.head.fc.weight.grad is None
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == before
    blocks = table[table.kind == "block"]
    assert blocks.depth.tolist() == list(range(9))
    assert blocks.name.tolist()[0] == "stage1.block0"
    layers = table[table.kind == "layer"]
    assert layers.name.iloc[0] == "stem.conv" and layers.name.iloc[-1] == "head.fc"
    # E[h^2] = mean^2 + var per channel, averaged over channels
    np.testing.assert_allclose(blocks.act_rms**2, blocks.act_mean_sq + blocks.act_var, rtol=1e-4)


def test_probe_needs_a_shape():
    with pytest.raises(ValueError, match="input_shape"):
        probe(nn.Linear(2, 2))


def test_probe_leaves_batchnorm_running_statistics_as_they_were():
    """gs.probe used to count its forward pass in every BN layer (num_batches_tracked 0 -> 1)
    and move the running mean and variance towards its random batch."""
    model = gs.models.create_model("resnet20", in_channels=1)
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    probe(model, input_shape=(1, 8, 8), batch_size=4)
    assert model.training
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_probe_takes_the_registered_input_shape_by_default():
    table = probe(gs.models.create_model("resmlp", depth=6, width=8, in_features=6), batch_size=4)
    assert table[table.kind == "block"].name.tolist() == ["body.block0", "body.block1"]


def test_probe_is_exported_by_the_probes_package_as_path_lengths_and_shattering_are() -> None:
    import gradsight.probes

    assert {"path_lengths", "probe", "shattering"} <= set(gradsight.probes.__all__)
    assert gradsight.probes.probe is gs.probe is probe
