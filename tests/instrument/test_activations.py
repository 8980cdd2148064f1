"""Activation statistics and the skip/branch split against torch.autograd.grad references."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradsight as gs


def _moments_reference(h: torch.Tensor, dim: int) -> dict[str, float]:
    x = h.detach().double().movedim(dim, -1).reshape(-1, h.shape[dim])
    mean = x.mean(0)
    var = x.var(0, unbiased=False)
    return {
        "act_mean_sq": float(mean.pow(2).mean()),
        "act_var": float(var.mean()),
        "act_rms": math.sqrt(float(x.pow(2).mean())),
    }


def _grad_reference(g: torch.Tensor) -> dict[str, float]:
    g = g.detach().double()
    return {
        "out_grad_norm": float(g.norm()),
        "out_grad_rms": float(g.pow(2).mean().sqrt()),
        "out_grad_nonfinite": float((~torch.isfinite(g)).sum()),
    }


def _recorded(run_dir, level):
    df = gs.open_run(run_dir).frame(level=level)
    return {(r.step, r.name, r.stat): r.value for r in df.itertuples()}


def _close(a, b, rtol=1e-4, atol=1e-7):
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def test_module_statistics_match_autograd(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 6), nn.Tanh(), nn.Linear(6, 3))
    x = torch.randn(8, 2, 5, 5)
    # reference: keep outputs, differentiate the loss with respect to them
    outputs = {}
    handles = [m.register_forward_hook(lambda mod, a, out, n=n: outputs.__setitem__(n, out))
               for n, m in model.named_modules() if n in {"0", "1", "4", "6"}]
    loss = model(x).pow(2).sum()
    grads = dict(zip(outputs, torch.autograd.grad(loss, list(outputs.values()))))
    for h in handles:
        h.remove()
    model.zero_grad()
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(x).pow(2).sum().backward()
        mon.step()
    got = _recorded(tmp_path / "run", "module")
    assert {n for _, n, _ in got} == {"0", "1", "4", "6"}  # leaf modules with parameters
    for name, h in outputs.items():
        want = {**_moments_reference(h, 1), **_grad_reference(grads[name])}
        for stat, value in want.items():
            assert _close(got[(0, name, stat)], value), (name, stat, got[(0, name, stat)], value)
    run = gs.open_run(tmp_path / "run")
    frame = run.frame(level="module", stat="act_rms")
    assert list(frame.sort_values("depth").name) == ["0", "1", "4", "6"]


def test_sequence_outputs_use_the_last_dimension_as_channels(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7))
    x = torch.randn(3, 4, 5)
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(x).sum().backward()
        mon.step()
    h = model(x)
    got = _recorded(tmp_path / "run", "module")
    for stat, value in _moments_reference(h, 2).items():
        assert _close(got[(0, "0", stat)], value)


def test_micro_batches_combine_exactly(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    xs = [torch.randn(5, 4) + 3, torch.randn(7, 4) - 1]
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        for x in xs:
            model(x).pow(2).sum().backward()
        mon.step()
    full = torch.cat(xs)
    h = model[0](full)
    got = _recorded(tmp_path / "run", "module")
    for stat, value in _moments_reference(h, 1).items():
        assert _close(got[(0, "0", stat)], value)
    # gradient of the summed losses w.r.t. the concatenated outputs
    g = torch.autograd.grad(model[2](model[1](h)).pow(2).sum(), h)[0]
    assert _close(got[(0, "0", "out_grad_norm")], float(g.double().norm()))


def test_only_recorded_steps_are_measured(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3))
    with gs.watch(model, tmp_path / "run", activations=True, every=2) as mon:
        for _ in range(4):
            model(torch.randn(2, 3)).sum().backward()
            mon.step()
    steps = set(gs.open_run(tmp_path / "run").frame(level="module").step)
    assert steps == {0, 2}


def test_pattern_selects_modules(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    with gs.watch(model, tmp_path / "run", activations=["1", "2"]) as mon:
        model(torch.randn(2, 3)).sum().backward()
        mon.step()
    names = set(gs.open_run(tmp_path / "run").frame(level="module").name)
    assert names == {"1", "2"}


# --- residual blocks -------------------------------------------------------------------

class AddBlock(nn.Module):
    """y = x + f(x)"""

    def __init__(self, width=6):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def branch(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))

    def shortcut(self, x):
        return x

    def forward(self, x):
        return x + self.branch(x)


class ProjectionBlock(nn.Module):
    """y = relu(f(x) + P x), P a projection"""

    def __init__(self, width=6, out=5):
        super().__init__()
        self.fc1 = nn.Linear(width, out)
        self.fc2 = nn.Linear(out, out)
        self.proj = nn.Linear(width, out, bias=False)

    def branch(self, x):
        return self.fc2(torch.relu(self.fc1(x)))

    def shortcut(self, x):
        return self.proj(x)

    def forward(self, x):
        return torch.relu(self.branch(x) + self.shortcut(x))


class InplaceBlock(nn.Module):
    """The lecture's style: out += identity, ReLU(inplace=True)."""

    def __init__(self, width=6):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(width, width)

    def branch(self, x):
        return self.fc2(self.relu(self.fc1(x)))

    def shortcut(self, x):
        return x

    def forward(self, x):
        identity = x
        out = self.fc1(x)
        out = self.relu(out)
        out = self.fc2(out)
        out += identity
        out = self.relu(out)
        return out


def _reference_split(block, x, head_grad_fn):
    """(||s||, ||b||, cos, var(branch)) from autograd.grad on an explicit forward."""
    x = x.detach().requires_grad_(True)
    sc = block.shortcut(x)
    br = block.branch(x)
    z = sc + br
    y = block.forward_after_add(z) if hasattr(block, "forward_after_add") else (
        torch.relu(z) if isinstance(block, (ProjectionBlock, InplaceBlock)) else z)
    loss = head_grad_fn(y)
    (gz,) = torch.autograd.grad(loss, z, retain_graph=True)
    (s,) = torch.autograd.grad(sc, x, gz, retain_graph=True) if sc is not x else (gz,)
    (b,) = torch.autograd.grad(br, x, gz)
    s, b = s.double(), b.double()
    var = float(br.detach().double().var(0, unbiased=False).mean())
    return float(s.norm()), float(b.norm()), float((s * b).sum() / (s.norm() * b.norm())), var


class Net(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.stem = nn.Linear(4, 6)
        self.block = block
        self.head = nn.Linear(block.fc2.out_features, 2)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


@pytest.mark.parametrize("block_cls", [AddBlock, ProjectionBlock, InplaceBlock])
def test_skip_branch_split_matches_autograd(tmp_path, block_cls):
    torch.manual_seed(0)
    net = Net(block_cls())
    x = torch.randn(10, 4)
    ref = _reference_split(net.block, net.stem(x), lambda y: net.head(y).pow(2).sum())
    with gs.watch(net, tmp_path / "run", activations=True) as mon:
        net(x).pow(2).sum().backward()
        mon.step()
    got = _recorded(tmp_path / "run", "block")
    assert {n for _, n, _ in got} == {"block"}
    for stat, want in zip(("skip_grad_norm", "branch_grad_norm", "skip_branch_cos", "branch_var"), ref):
        assert _close(got[(0, "block", stat)], want, rtol=1e-4, atol=1e-6), (stat, got[(0, "block", stat)], want)
    # the two contributions add up to the whole gradient at the block input
    assert gs.open_run(tmp_path / "run").layers("block").name.tolist() == ["block"]


def test_plain_blocks_and_stages_are_not_residual(tmp_path):
    model = gs.models.create_model("plain20", in_channels=1)
    with gs.watch(model, tmp_path / "plain", activations=True) as mon:
        model(torch.randn(2, 1, 28, 28)).sum().backward()
        mon.step()
    assert gs.open_run(tmp_path / "plain").frame(level="block").empty
    model = gs.models.create_model("resnet20", in_channels=1)
    with gs.watch(model, tmp_path / "res", activations=True) as mon:
        model(torch.randn(2, 1, 28, 28)).sum().backward()
        mon.step()
    blocks = gs.open_run(tmp_path / "res").layers("block").name.tolist()
    assert blocks == [f"stage{s}.block{b}" for s in (1, 2, 3) for b in range(3)]  # not stages, not the model


def _zoo_reference(block, x, loss_of_block_output):
    x = x.detach().requires_grad_(True)
    sc = block.shortcut(x)
    br = block.branch(x)
    z = sc + br
    y = block.post_act(z) if block.post_act is not None else z
    (gz,) = torch.autograd.grad(loss_of_block_output(y), z, retain_graph=True)
    (s,) = torch.autograd.grad(sc, x, gz, retain_graph=True)
    (b,) = torch.autograd.grad(br, x, gz)
    return float(s.double().norm()), float(b.double().norm())


def test_zoo_resnet_split_every_block(tmp_path):
    """Each block of a ResNet-20 (identity and zero-padding shortcuts) against autograd."""
    torch.manual_seed(0)
    model = gs.models.create_model("resnet20", in_channels=1).eval()  # eval: BN is per-sample
    x = torch.randn(3, 1, 28, 28)
    inputs, outputs = {}, {}
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, gs.models.ResidualBlock)}
    def keep(name):
        def hook(mod, args, out):
            inputs[name], outputs[name] = args[0], out

        return hook

    hs = [m.register_forward_hook(keep(n)) for n, m in blocks.items()]
    out = model(x)
    for h in hs:
        h.remove()
    loss = out.pow(2).sum()
    gys = dict(zip(outputs, torch.autograd.grad(loss, list(outputs.values()))))
    model.zero_grad()
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(x).pow(2).sum().backward()
        mon.step()
    got = _recorded(tmp_path / "run", "block")
    for name, block in blocks.items():
        s, b = _zoo_reference(block, inputs[name], lambda y, g=gys[name]: (y * g).sum())
        assert _close(got[(0, name, "skip_grad_norm")], s), name
        assert _close(got[(0, name, "branch_grad_norm")], b), name


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_blocks(tmp_path, arch):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    captured = {}
    blocks = {n: m for n, m in model.named_modules() if type(m).__name__ in ("BasicBlock", "Bottleneck")}
    hs = [m.register_forward_hook(lambda mod, a, out, n=n: captured.__setitem__(n, (a[0], out)))
          for n, m in blocks.items()]
    out = model(x)
    for h in hs:
        h.remove()
    names = list(captured)
    gys = dict(zip(names, torch.autograd.grad(out.pow(2).sum(), [captured[n][1] for n in names])))
    model.zero_grad()
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(x).pow(2).sum().backward()
        mon.step()
    got = _recorded(tmp_path / "run", "block")
    assert {n for _, n, _ in got} == set(blocks)
    for name, block in blocks.items():
        xin = captured[name][0].detach().requires_grad_(True)
        identity = block.downsample(xin) if block.downsample is not None else xin
        o = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(xin)))))
        if hasattr(block, "conv3"):
            o = block.bn3(block.conv3(block.relu(o)))
        z = o + identity
        (gz,) = torch.autograd.grad((torch.relu(z) * gys[name]).sum(), z, retain_graph=True)
        (s,) = torch.autograd.grad(identity, xin, gz, retain_graph=True) if identity is not xin else (gz,)
        (b,) = torch.autograd.grad(o, xin, gz)
        assert _close(got[(0, name, "skip_grad_norm")], float(s.double().norm())), name
        assert _close(got[(0, name, "branch_grad_norm")], float(b.double().norm())), name


class TwoAdds(nn.Module):
    """A transformer-like block: two residual additions in one module."""

    def __init__(self):
        super().__init__()
        self.f = nn.Linear(4, 4)
        self.g = nn.Linear(4, 4)

    def forward(self, x):
        x = x + self.f(x)
        return x + self.g(x)


def test_two_additions_in_one_module_give_one_row_each(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), TwoAdds(), nn.Linear(4, 1))
    with gs.watch(model, tmp_path / "auto", activations=True) as mon:
        model(torch.randn(3, 4)).sum().backward()
        mon.step()
    run = gs.open_run(tmp_path / "auto")
    assert run.layers("block").name.tolist() == ["1[f]", "1[g]"]
    got = run.frame(level="block")
    assert set(got.stat) >= {"skip_grad_norm", "branch_grad_norm", "skip_branch_cos", "branch_var", "act_rms"}


class LeafResidual(nn.Module):
    """``x + tanh(x @ W)`` with the weight held by the module itself (no submodules)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4) / 2)

    def forward(self, x):
        return x + torch.tanh(x @ self.weight)


def test_an_addition_in_a_module_without_submodules_is_that_modules(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), LeafResidual(), nn.Linear(4, 1))
    with gs.watch(model, tmp_path / "auto", activations=True, residual_blocks=["1"]) as mon:
        model(torch.randn(3, 4)).sum().backward()
        mon.step()
    got = gs.open_run(tmp_path / "auto").frame(level="block")
    assert set(got.name) == {"1"}
    assert set(got.stat) >= {"skip_grad_norm", "branch_grad_norm", "skip_branch_cos"}


def test_activation_hooks_removed_on_close(tmp_path):
    model = gs.models.create_model("resnet20", in_channels=1)
    before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(torch.randn(2, 1, 28, 28)).sum().backward()
        mon.step()
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == before
