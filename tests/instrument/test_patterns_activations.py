"""Module and block rows under less common training patterns, against retain_grad references.

Gradient penalties, MAML inner steps and GANs run backward passes besides the one whose
gradient ``monitor.step()`` records; the references keep (``retain_grad``) the module
outputs of every forward and read their ``.grad`` after the loss's ``backward()`` alone.
Reentrant checkpointing, ``torch.compile`` and ``torch.func`` transforms run forwards
where gradsight's hooks see no graph, or none at all.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.checkpoint import checkpoint

import gradsight as gs

RTOL = 1e-6


class Residual(nn.Module):
    """y = x + fc2(tanh(fc1(x)))"""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.tanh(self.fc1(x)))


class Critic(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Linear(4, width)
        self.block = Residual(width)
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.block(torch.tanh(self.stem(x)))))


class Reference:
    """Keeps, with ``retain_grad``, the outputs of ``modules`` and of the residual ``blocks`` at
    every call; :meth:`rows` reads their ``.grad`` (float64).

    ``blocks`` maps an identity-skip block ``y = x + f(x)`` to the ``nn.Linear`` that ``f``
    starts with (one of ``modules``): the skip's part of ``dL/dx`` is ``dL/dy``, the branch's
    is ``dL/d(first output) @ weight`` (``x`` may have other consumers: a double backward's).
    """

    def __init__(self, model: nn.Module, modules: list[str], blocks: dict[str, str] | None = None) -> None:
        self.named = dict(model.named_modules())
        self.outputs: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
        self.branch_entry = dict(blocks or {})
        self.blocks: dict[str, list[torch.Tensor]] = {n: [] for n in self.branch_entry}
        self._new: list[torch.Tensor] = []
        self.handles = [self.named[n].register_forward_hook(self._keep_output(self.outputs[n])) for n in modules]
        self.handles += [self.named[n].register_forward_hook(self._keep_output(self.blocks[n])) for n in self.blocks]

    def _retain(self, t: torch.Tensor) -> None:
        t.retain_grad()
        self._new.append(t)

    def _keep_output(self, kept: list[torch.Tensor]):
        def hook(module, args, out):
            self._retain(out)
            kept.append(out)
        return hook

    def forget_grads(self) -> None:
        """Call right before the loss's backward: drops what earlier torch.autograd.grad passes
        over the tensors kept since the last call left in their ``.grad``."""
        for t in self._new:
            t.grad = None
        self._new = []

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def rows(self) -> dict[tuple[str, str, str], float]:
        """Expected module and block statistics."""
        want = {}
        for name, outs in self.outputs.items():
            h = torch.cat([o.detach().double().reshape(-1, o.shape[-1]) for o in outs])
            mean, var = h.mean(0), h.var(0, unbiased=False)
            want[("module", name, "act_mean_sq")] = float(mean.square().mean())
            want[("module", name, "act_var")] = float(var.mean())
            want[("module", name, "act_rms")] = math.sqrt(float(h.square().mean()))
            grads = [o.grad.double() for o in outs if o.grad is not None]
            sumsq = sum(float(g.square().sum()) for g in grads)
            want[("module", name, "out_grad_norm")] = math.sqrt(sumsq)
            want[("module", name, "out_grad_rms")] = math.sqrt(sumsq / sum(g.numel() for g in grads))
        for name, ys in self.blocks.items():
            entry = self.branch_entry[name]
            weight = self.named[entry].weight.detach().double()
            skip = [y.grad.double() for y in ys]
            branch = [h.grad.double() @ weight for h in self.outputs[entry]]
            s = math.sqrt(sum(float(g.square().sum()) for g in skip))
            b = math.sqrt(sum(float(g.square().sum()) for g in branch))
            want[("block", name, "skip_grad_norm")] = s
            want[("block", name, "branch_grad_norm")] = b
            want[("block", name, "skip_branch_cos")] = sum(float((u * v).sum()) for u, v in zip(skip, branch)) / (s * b)
        return want


def _recorded(run_dir, step: int) -> dict[tuple[str, str, str], float]:
    frame = gs.open_run(run_dir).frame()
    frame = frame[(frame.step == step) & frame.level.isin(["module", "block"])]
    return {(r.level, r.name, r.stat): r.value for r in frame.itertuples()}


def _assert_rows(got: dict, want: dict, rtol: float = RTOL) -> None:
    for key, value in want.items():
        assert key in got, f"missing {key}"
        assert math.isclose(got[key], value, rel_tol=rtol, abs_tol=1e-9), (key, got[key], value)


# --- 3: gradients that are not the loss's ------------------------------------------------

def _wgan_gp_loss(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor,
                  before_backward=lambda: None) -> torch.Tensor:
    interp = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(interp).sum(), interp, create_graph=True)
    penalty = ((g.norm(2, dim=1) - 1) ** 2).mean()
    loss = critic(fake).mean() - critic(real).mean() + 10 * penalty
    before_backward()
    return loss


def test_gradient_penalty_pass_is_not_pooled_into_module_rows(tmp_path):
    """Regression: the penalty's torch.autograd.grad pass added its gradient to out_grad_norm
    (several times too high on the critic's last layer) and to the block split."""
    torch.manual_seed(0)
    critic = Critic().double()
    real, fake, alpha = torch.randn(16, 4).double(), torch.randn(16, 4).double(), torch.rand(16, 1).double()
    modules = ["stem", "block.fc1", "block.fc2", "block", "head"]
    ref = Reference(critic, modules, {"block": "block.fc1"})
    _wgan_gp_loss(critic, real, fake, alpha, ref.forget_grads).backward()
    ref.close()
    want = ref.rows()
    critic.zero_grad()
    with gs.watch(critic, tmp_path / "run", activations=True) as mon:
        _wgan_gp_loss(critic, real, fake, alpha).backward()
        mon.step()
    _assert_rows(_recorded(tmp_path / "run", 0), want)


def test_maml_inner_step_is_not_pooled_into_module_rows(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    tasks = [(torch.randn(10, 3).double(), torch.randn(10, 1).double(), torch.randn(10, 3).double(),
              torch.randn(10, 1).double()) for _ in range(2)]

    def meta_step(before_backward=lambda: None):
        for xs, ys, xq, yq in tasks:  # meta-gradient accumulated over tasks
            params = dict(model.named_parameters())
            inner = (model(xs) - ys).pow(2).mean()
            grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
            fast = {n: p - 0.1 * g for (n, p), g in zip(params.items(), grads)}
            outer = (functional_call(model, fast, (xq,)) - yq).pow(2).mean()
            before_backward()
            outer.backward()

    ref = Reference(model, ["0", "2"])
    meta_step(ref.forget_grads)
    ref.close()
    want = ref.rows()
    model.zero_grad()
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        meta_step()
        mon.step()
    _assert_rows(_recorded(tmp_path / "run", 0), want)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_gan_with_both_models_watched(tmp_path, set_to_none):
    """Regression: the discriminator's rows at its step held the generator step's pass through it
    (its forward and its gradient, reset by zero_grad before the discriminator's own pass), and the
    generator's rows the discriminator step's ``G(z).detach()`` forward, which no backward reached."""
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    disc = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    opt_g = torch.optim.SGD(gen.parameters(), lr=0.05)
    opt_d = torch.optim.SGD(disc.parameters(), lr=0.05)
    bce = nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones(8, 1).double(), torch.zeros(8, 1).double()
    mon_d = gs.watch(disc, tmp_path / "d", activations=True)
    mon_g = gs.watch(gen, tmp_path / "g", activations=True)
    want_d, want_g = [], []
    for _ in range(3):
        real, z = torch.randn(8, 4).double(), torch.randn(8, 2).double()
        opt_d.zero_grad(set_to_none=set_to_none)
        ref = Reference(disc, ["0", "2"])  # the discriminator step alone
        loss_d = bce(disc(real), ones) + bce(disc(gen(z).detach()), zeros)
        ref.close()
        loss_d.backward()
        want_d.append(ref.rows())
        mon_d.step()
        opt_d.step()

        opt_g.zero_grad(set_to_none=set_to_none)
        ref = Reference(gen, ["0", "2"])  # the generator step alone
        loss_g = bce(disc(gen(torch.randn(8, 2).double())), ones)  # also accumulates into disc's .grad
        ref.close()
        loss_g.backward()
        want_g.append(ref.rows())
        mon_g.step()
        opt_g.step()
    mon_d.close()
    mon_g.close()
    for step in range(3):
        _assert_rows(_recorded(tmp_path / "d", step), want_d[step])
        _assert_rows(_recorded(tmp_path / "g", step), want_g[step])


def test_gradients_from_torch_autograd_grad_alone_are_not_recorded(tmp_path):
    """Training without backward() (``p.grad`` assigned from torch.autograd.grad): no
    out_grad_* row (never a made-up one), and one warning that says why."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        for step in range(2):
            loss = model(torch.randn(5, 3)).pow(2).mean()
            for p, g in zip(model.parameters(), torch.autograd.grad(loss, list(model.parameters()))):
                p.grad = g
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                mon.step()
            messages = [str(w.message) for w in caught if "activations=True" in str(w.message)]
            assert messages == ([] if step else [
                "activations=True records no output gradient at this step (nor the forward statistics of calls "
                "that only such passes reached): no backward pass since the previous recorded step accumulated "
                "into the parameters' .grad and was kept; gradients from torch.autograd.grad, or reset by "
                "zero_grad before monitor.step(), are not the ones monitor.step() records"])
    # no backward pass that counts reached the forward: its statistics are left out too
    assert gs.open_run(tmp_path / "run").frame(level="module").empty



@pytest.mark.parametrize("between", ["clip", "zero_grad"])
def test_micro_batches_count_until_the_gradients_are_reset(tmp_path, between):
    """Changing ``.grad`` in place between two passes (clipping) keeps both; zeroing it in place
    (``zero_grad(set_to_none=False)``) keeps only the passes after it, as ``.grad`` does."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    xs = [torch.randn(5, 3).double() for _ in range(3)]

    def micro_batches():
        model.zero_grad(set_to_none=False)
        for i, x in enumerate(xs):
            if i == 2:
                if between == "clip":
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
                else:
                    model.zero_grad(set_to_none=False)
            model(x).pow(2).sum().backward()

    ref = Reference(model, ["0", "2"])
    micro_batches()
    ref.close()
    if between == "zero_grad":
        ref.outputs = {name: outs[2:] for name, outs in ref.outputs.items()}
    want = ref.rows()
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        micro_batches()
        mon.step()
    _assert_rows(_recorded(tmp_path / "run", 0), want)


def test_frozen_model_pools_every_pass_and_says_so(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).requires_grad_(False)
    x = torch.randn(5, 3, requires_grad=True)
    with pytest.warns(UserWarning) as caught:
        with gs.watch(model, tmp_path / "run", activations=["0"]) as mon:
            (g,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
            (model(x).sum() + g.square().sum()).backward()
            mon.step()
    assert [str(w.message) for w in caught if "activations=True" in str(w.message)] == [
        "activations=True: the model has no trainable parameter to tell backward passes apart, so module and "
        "block rows pool the gradient of every backward pass since the previous recorded step"]

# --- 6: torch.compile ------------------------------------------------------------------------

COMPILED_AT_STEP = (
    "activations=True recorded no module or block rows at this step: no forward of the model ran in eager mode "
    "since the previous recorded step. A torch.compile-d forward runs without gradsight's forward hooks, so its "
    "modules get no module or block rows (parameter, layer and model statistics are recorded as usual); train "
    "the uncompiled model for module and block rows")


def _compiled_steps(tmp_path, activations: bool | None) -> tuple[int, int, list[str]]:
    """(graph breaks, compiled graphs, gradsight's warnings) of three steps of a compiled residual net."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = Critic()
    compiled = torch.compile(model, backend="aot_eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = None if activations is None else gs.watch(model, tmp_path / "run-act", activations=activations)
        for _ in range(3):
            compiled(torch.randn(8, 4)).pow(2).mean().backward()
            if mon is not None:
                mon.step()
            model.zero_grad()
        if mon is not None:
            mon.close()
    said = [str(w.message) for w in caught if "activations=True" in str(w.message)]
    return sum(counters["graph_break"].values()), counters["stats"]["unique_graphs"], said


def test_compiled_model_says_once_that_it_has_no_module_rows(tmp_path):
    """Regression: a torch.compile-d model recorded no module or block rows and said nothing.
    The hooks add no graph break and no recompilation; parameter statistics are recorded."""
    bare = _compiled_steps(tmp_path, None)
    watched = _compiled_steps(tmp_path, True)
    assert watched[:2] == bare[:2] == (0, 1)
    assert watched[2] == [COMPILED_AT_STEP]
    frame = gs.open_run(tmp_path / "run-act").frame()
    assert set(frame.level) == {"param", "layer", "model"}
    assert sorted(set(frame.step)) == [0, 1, 2]


def test_watching_a_compiled_model_warns_at_watch(tmp_path):
    model = Critic()
    model.block.compile(backend="aot_eager")  # nn.Module.compile: the block's calls are compiled
    with pytest.warns(UserWarning) as caught:
        gs.watch(model, tmp_path / "run", activations=True).close()
    assert [str(w.message) for w in caught] == [
        "activations=True: 'block' is compiled with torch.compile; a compiled forward runs without gradsight's "
        "forward hooks, so its modules get no module or block rows (parameter, layer and model statistics are "
        "recorded as usual); train the uncompiled model for module and block rows"]


# --- 7: reentrant checkpointing ----------------------------------------------------------------

class Branch(nn.Module):
    """y = x + mlp(x), the branch optionally under checkpoint(self.mlp, x)"""

    def __init__(self, width: int, reentrant: bool | None) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
        self.reentrant = reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reentrant is None:
            return x + self.mlp(x)
        return x + checkpoint(self.mlp, x, use_reentrant=self.reentrant)


class Checkpointed(nn.Module):
    """Two residual blocks, each checkpointed whole (``style='block'``) or in its branch."""

    def __init__(self, style: str, reentrant: bool | None) -> None:
        super().__init__()
        self.style, self.reentrant = style, reentrant
        self.stem = nn.Linear(4, 6)
        self.blocks = nn.ModuleList([Residual(6) if style == "block" else Branch(6, reentrant) for _ in range(2)])
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.stem(x))
        for block in self.blocks:
            whole = self.style == "block" and self.reentrant is not None
            h = checkpoint(block, h, use_reentrant=self.reentrant) if whole else block(h)
        return self.head(h)


@pytest.mark.parametrize("style", ["block", "branch"])
@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpointed_blocks_keep_their_rows(tmp_path, style, reentrant):
    """Regression: with use_reentrant=True every module and block row inside the checkpointed
    blocks was lost, silently (the forward runs without grad, the graph exists only while
    backward re-runs it)."""
    torch.manual_seed(0)
    model = Checkpointed(style, reentrant).double()
    x = torch.randn(8, 4).double()
    first = "fc1" if style == "block" else "mlp.0"
    inner = ["fc1", "fc2"] if style == "block" else ["mlp.0", "mlp.2"]
    modules = ["stem", "head", "blocks.0", "blocks.1"] + [f"blocks.{i}.{m}" for i in range(2) for m in inner]
    model.reentrant = None  # the reference: the same computation, not checkpointed
    for block in model.blocks:
        block.reentrant = None
    ref = Reference(model, modules, {f"blocks.{i}": f"blocks.{i}.{first}" for i in range(2)})
    model(x).pow(2).sum().backward()
    ref.close()
    want = ref.rows()
    model.reentrant = reentrant
    for block in model.blocks:
        block.reentrant = reentrant
    model.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "None of the inputs have requires_grad=True" (none here)
        with gs.watch(model, tmp_path / "run", activations=True) as mon:
            for _ in range(2):
                model(x).pow(2).sum().backward()
                mon.step()
                model.zero_grad()
    for step in range(2):
        got = _recorded(tmp_path / "run", step)
        _assert_rows(got, want)
        assert {(level, name) for level, name, _ in got} == {(level, name) for level, name, _ in want}
    assert gs.open_run(tmp_path / "run").layers("block").name.tolist() == ["blocks.0", "blocks.1"]  # forward order


def test_hugging_face_reentrant_gradient_checkpointing_keeps_rows(tmp_path):
    """Hugging Face runs each layer's forward (not its hooks) under torch's checkpoint; with
    use_reentrant=True the rows equal those of the model trained without checkpointing
    (which tests/integrations/test_hf_residuals.py checks against retain_grad)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    rows = {}
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config).train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if checkpointed:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            with gs.watch(model, tmp_path / str(checkpointed), activations=True) as mon:
                model(ids, labels=ids).loss.backward()
                mon.step()
        rows[checkpointed] = _recorded(tmp_path / str(checkpointed), 0)
    assert {n for level, n, _ in rows[False] if level == "block"} == {
        f"transformer.h.{i}[{b}]" for i in range(2) for b in ("attn", "mlp")}
    assert rows[True].keys() == rows[False].keys()
    _assert_rows(rows[True], rows[False], rtol=1e-5)
    for checkpointed in (False, True):
        assert gs.open_run(tmp_path / str(checkpointed)).layers("block").name.tolist() == [
            f"transformer.h.{i}[{b}]" for i in range(2) for b in ("attn", "mlp")]


# --- 10: torch.func transforms -------------------------------------------------------------------

TRANSFORM = ("activations=True: forwards and backward passes run under a torch.func transform (vmap, grad, jacrev, "
             "...) are not measured; module and block rows leave them out")


def test_per_sample_gradients_under_vmap_are_left_alone(tmp_path):
    """Regression: vmap(grad(functional_call(...))) raised inside gradsight's tensor hook
    (``.item()`` under vmap). Now the transform's passes are skipped, said once, and the
    step's rows are those of the loss's backward."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    x, y = torch.randn(6, 4).double(), torch.randn(6, 1).double()

    def sample_loss(params, xi, yi):
        return (functional_call(model, params, (xi[None],)) - yi).pow(2).sum()

    def per_sample_grads():
        params = {k: v.detach() for k, v in model.named_parameters()}
        return vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)

    want_grads = per_sample_grads()
    ref = Reference(model, ["0", "2"])
    (model(x) - y).pow(2).sum().backward()
    ref.close()
    want = ref.rows()
    model.zero_grad()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gs.watch(model, tmp_path / "run", activations=True) as mon:
            for _ in range(2):
                got_grads = per_sample_grads()
                (model(x) - y).pow(2).sum().backward()
                mon.step()
                model.zero_grad()
    assert [str(w.message) for w in caught if "activations=True" in str(w.message)] == [TRANSFORM]
    for name, g in want_grads.items():
        assert torch.equal(got_grads[name], g)
    for step in range(2):
        _assert_rows(_recorded(tmp_path / "run", step), want)
