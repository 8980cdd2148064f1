"""Every residual addition, measured against retain_grad references.

For an addition ``y = s + f(s)`` with an identity skip, ``dL/ds = dL/dy + f'ᵀ dL/dy``
when ``s`` feeds only the branch and the addition: the skip part is ``dL/dy`` (the
gradient at the addition's output) and the branch part is ``dL/ds - dL/dy``. The
references read both from ``retain_grad`` on the real tensors of a forward pass.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

import gradsight as gs

RTOL = 1e-4  # float32: the reference's dL/ds - dL/dy rounds at about 1e-7 of dL/ds


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(n, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(n, t, c))


class MLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 4 * width)
        self.proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    """nanoGPT's pre-LN block; ``keep`` retains the stream tensors for the reference."""

    def __init__(self, width: int, heads: int, branch_scale: float = 1.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width)
        self.branch_scale = branch_scale
        self.kept: list[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.ln_1(x)) * self.branch_scale
        h = x + a
        m = self.mlp(self.ln_2(h)) * self.branch_scale
        y = h + m
        if self.kept is not None:
            for t in (x, h, y):
                t.retain_grad()
            self.kept += [x, h, y, a, m]
        return y


class TinyGPT(nn.Module):
    def __init__(self, depth: int = 3, width: int = 16, heads: int = 2, vocab: int = 50, context: int = 8,
                 branch_scale: float = 1.0, checkpointed: str | None = None) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads, branch_scale) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.checkpointed = checkpointed

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            if self.checkpointed is None:
                x = block(x)
            else:
                x = checkpoint(block, x, use_reentrant=self.checkpointed == "reentrant")
        return self.head(self.ln_f(x))


def _loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    logits = model(idx)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))


def _reference(model: TinyGPT, idx: torch.Tensor) -> dict[tuple[str, str], float]:
    """``{(row, stat): value}`` from retain_grad on each block's x, h, y."""
    for block in model.blocks:
        block.kept = []
    _loss(model, idx).backward()
    want = {}
    for i, block in enumerate(model.blocks):
        x, h, y, a, m = block.kept
        block.kept = None
        for label, stream, out, branch_value in (("attn", x, h, a), ("mlp", h, y, m)):
            skip = out.grad.double()
            branch = stream.grad.double() - skip
            row = f"blocks.{i}[{label}]"
            want[(row, "skip_grad_norm")] = float(skip.norm())
            want[(row, "branch_grad_norm")] = float(branch.norm())
            want[(row, "skip_branch_cos")] = float((skip * branch).sum() / (skip.norm() * branch.norm()))
            want[(row, "act_rms")] = float(stream.detach().double().pow(2).mean().sqrt())
            flat = branch_value.detach().double().reshape(-1, branch_value.shape[-1])
            want[(row, "branch_var")] = float(flat.var(0, unbiased=False).mean())
            want[(row, "branch_mean_sq")] = float(flat.mean(0).square().mean())
    model.zero_grad()
    return want


def _recorded(run_dir) -> dict[tuple[str, str], float]:
    frame = gs.open_run(run_dir).frame(level="block")
    return {(r.name, r.stat): r.value for r in frame[frame.step == 0].itertuples()}


def _assert_matches(got, want, rtol=RTOL):
    for key, value in want.items():
        assert key in got, key
        if math.isnan(value):
            assert math.isnan(got[key]), (key, got[key])
        else:
            assert math.isclose(got[key], value, rel_tol=rtol, abs_tol=1e-9), (key, got[key], value)


def _model(**kw) -> tuple[TinyGPT, torch.Tensor]:
    torch.manual_seed(0)
    return TinyGPT(**kw), torch.randint(0, 50, (4, 8))


def test_pre_ln_block_rows_match_retain_grad(tmp_path):
    model, idx = _model()
    want = _reference(model, idx)
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        _loss(model, idx).backward()
        mon.step()
    run = gs.open_run(tmp_path / "run")
    assert run.layers("block").name.tolist() == [f"blocks.{i}[{b}]" for i in range(3) for b in ("attn", "mlp")]
    assert set(run.layers("block").module_type) == {"Block"}
    _assert_matches(_recorded(tmp_path / "run"), want)


def test_probe_has_one_row_per_addition(tmp_path):
    model, idx = _model()
    want = _reference(model, idx)  # probe feeds a random output gradient: compare what does not depend on it
    df = gs.probe(model, idx)
    blocks = df[df.kind == "block"]
    assert blocks.name.tolist() == [f"blocks.{i}[{b}]" for i in range(3) for b in ("attn", "mlp")]
    for r in blocks.itertuples():
        assert math.isclose(r.stream_rms, want[(r.name, "act_rms")], rel_tol=RTOL)
        assert math.isclose(r.branch_var, want[(r.name, "branch_var")], rel_tol=RTOL)
        assert r.skip_grad_norm > 0 and r.branch_grad_norm > 0


@pytest.mark.parametrize("how", ["zero_scale", "zero_init"])
def test_zero_branch_has_exactly_zero_branch_gradient(tmp_path, how):
    model, idx = _model(branch_scale=0.0 if how == "zero_scale" else 1.0)
    if how == "zero_init":  # the branch's last layer starts at zero (GPT-2-style zero init)
        for block in model.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)
    want = _reference(model, idx)
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        _loss(model, idx).backward()
        mon.step()
    got = _recorded(tmp_path / "run")
    for i in range(3):
        for b in ("attn", "mlp"):
            row = f"blocks.{i}[{b}]"
            assert got[(row, "branch_grad_norm")] == 0.0
            assert got[(row, "branch_var")] == 0.0
            assert math.isclose(got[(row, "skip_grad_norm")], want[(row, "skip_grad_norm")], rel_tol=RTOL)


@pytest.mark.parametrize("checkpointed", ["non-reentrant", "reentrant"])
def test_gradient_checkpointing_counts_each_addition_once(tmp_path, checkpointed):
    model, idx = _model()
    want = _reference(model, idx)
    model.checkpointed = checkpointed
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        _loss(model, idx).backward()
        mon.step()
    got = _recorded(tmp_path / "run")
    names = gs.open_run(tmp_path / "run").layers("block").name.tolist()
    # reentrant: the forward runs without grad; the additions are found and measured while backward re-runs it
    assert names == [f"blocks.{i}[{b}]" for i in range(3) for b in ("attn", "mlp")]
    _assert_matches(got, want)


def test_micro_batches_add_up(tmp_path):
    model, idx = _model()
    refs = [_reference(model, part) for part in idx.split(2)]
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        for part in idx.split(2):
            _loss(model, part).backward()
        mon.step()
    got = _recorded(tmp_path / "run")
    for row in {r for r, _ in refs[0]}:
        for stat in ("skip_grad_norm", "branch_grad_norm"):
            want = math.sqrt(sum(ref[(row, stat)] ** 2 for ref in refs))
            assert math.isclose(got[(row, stat)], want, rel_tol=RTOL), (row, stat)


class Unnamed(nn.Module):
    """Two additions whose branches run through no submodule of their own."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(width, width) / width**0.5)
        self.w2 = nn.Parameter(torch.randn(width, width) / width**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + torch.tanh(x @ self.w1)
        return x + torch.tanh(x @ self.w2)


class Shared(nn.Module):
    """Both additions run through the same submodule."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.f = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.f(x)
        return x + self.f(x)


@pytest.mark.parametrize("block_cls", [Unnamed, Shared])
def test_additions_without_their_own_submodule_are_numbered(tmp_path, block_cls):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), block_cls(), nn.Linear(6, 1))
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(torch.randn(5, 3)).sum().backward()
        mon.step()
    assert gs.open_run(tmp_path / "run").layers("block").name.tolist() == ["1[0]", "1[1]"]


class PostLN(nn.Module):
    """BERT-style: the addition is followed by a LayerNorm."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.f = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.f(x))


def test_post_ln_addition_is_a_residual_addition(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), PostLN(), PostLN(), nn.Linear(6, 1))
    x = torch.randn(5, 3)
    kept = []

    def keep(module, args, output):
        z = args[0]
        z.retain_grad()
        kept.append(z)

    handles = [model[i].norm.register_forward_hook(keep) for i in (1, 2)]
    streams = []

    def keep_stream(module, args):
        args[0].retain_grad()
        streams.append(args[0])

    handles += [model[i].register_forward_pre_hook(keep_stream) for i in (1, 2)]
    model(x).sum().backward()
    for h in handles:
        h.remove()
    model.zero_grad()
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(x).sum().backward()
        mon.step()
    got = _recorded(tmp_path / "run")
    for i, (z, s) in enumerate(zip(kept, streams), start=1):
        skip = z.grad
        branch = s.grad - skip
        assert math.isclose(got[(str(i), "skip_grad_norm")], float(skip.norm()), rel_tol=RTOL)
        assert math.isclose(got[(str(i), "branch_grad_norm")], float(branch.norm()), rel_tol=RTOL)


def test_a_container_of_one_block_is_not_a_block(tmp_path):
    model = gs.models.create_model("inplace_resnet", width=4)
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        mon.step()
    names = gs.open_run(tmp_path / "run").layers("block").name.tolist()
    assert names and all(name.count(".") == 1 for name in names), names  # layer1.0, not layer1


def test_parameter_free_additions_are_not_residual(tmp_path):
    """Rotary-style ``q * cos + rotate(q) * sin`` and GELU's ``x + c x³`` add two functions of one tensor."""

    class Rotary(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(4, 4)

        def forward(self, x):
            q = self.q(x)
            q = q * 0.5 + torch.cat([-q[:, 2:], q[:, :2]], dim=1) * 0.25
            return q + 0.044715 * q.pow(3)

    model = nn.Sequential(Rotary(), nn.Linear(4, 1))
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(torch.randn(3, 4)).sum().backward()
        mon.step()
    assert gs.open_run(tmp_path / "run").layers("block").empty


class InlineHead(nn.Module):
    """``head(h + body(h))`` written in the model's own forward."""

    def __init__(self, then_head: bool) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 6)
        self.body = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
        self.head = nn.Linear(6, 2) if then_head else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.head(torch.relu(h + self.body(h)))


@pytest.mark.parametrize("then_head", [True, False])
def test_an_addition_in_the_models_own_forward_counts_only_at_its_end(tmp_path, then_head):
    torch.manual_seed(0)
    model = InlineHead(then_head)
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(torch.randn(4, 3)).sum().backward()
        mon.step()
    names = gs.open_run(tmp_path / "run").layers("block").name.tolist()
    assert names == ([] if then_head else [""])


def test_an_exception_inside_a_block_leaves_no_mode_behind(tmp_path):
    from torch.overrides import _get_current_function_mode_stack

    model, idx = _model()
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        _loss(model, idx).backward()
        mon.step()
        model.blocks[1].attn.heads = 3  # 16 channels do not split into 3 heads
        with pytest.raises(RuntimeError):
            _loss(model, idx)
        assert not _get_current_function_mode_stack()
        model.blocks[1].attn.heads = 2
        _loss(model, idx).backward()
        mon.step()
    got = gs.open_run(tmp_path / "run").frame(level="block")
    assert set(got.step) == {0, 1} and len(set(got.name)) == 6
