"""Less common ways to build a layer: parametrizations, LoRA adapters, a frozen head, a module called twice.

Each is checked against an independent reference: float64 statistics recomputed from
the ``.grad`` of the tensors that train, and ``retain_grad`` for output gradients.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal, spectral_norm, weight_norm

import gradsight as gs
from gradsight.instrument.layers import Inventory, layer_modules, module_owners
from gradsight.plots.training import shown_layers
from gradsight.store.query import first_last_ratio
from gradsight.store.roles import row_roles
from tests.instrument.reference import tensor_stats


def _frame(run_dir, level):
    df = gs.open_run(run_dir).frame(level=level)
    return {(r.step, r.name, r.stat): r.value for r in df.itertuples()}


def _assert_stats(got, step, level, name, grads, weights):
    for stat, want in tensor_stats(grads, weights).items():
        have = got[(step, name, stat)]
        assert math.isclose(have, want, rel_tol=2e-6, abs_tol=1e-12), (level, name, stat, have, want)


def _table(run):
    return list(run.layers(kind=None)[["name", "depth", "module_type", "kind", "role", "tied"]]
                .itertuples(index=False, name=None))


# -- parametrizations --------------------------------------------------------------------------


def _sigmoid_mlp(normed: bool) -> nn.Sequential:
    """Ten Linear layers with sigmoids between them; weight norm on the eight hidden ones
    (at initialization weight norm reproduces the weights: the same function)."""
    torch.manual_seed(0)
    dims = [8] + [32] * 9 + [4]
    layers: list[nn.Module] = []
    for i in range(10):
        lin = nn.Linear(dims[i], dims[i + 1])
        layers += [weight_norm(lin) if normed and 0 < i < 9 else lin, nn.Sigmoid()]
    return nn.Sequential(*layers[:-1])


def _train(model, run_dir, steps=2, **watch):
    torch.manual_seed(1)
    xs = [torch.randn(16, 8) for _ in range(steps)]
    outputs: dict[str, list[torch.Tensor]] = {}

    def keep(name):
        def hook(module, args, out):
            out.retain_grad()
            outputs.setdefault(name, []).append(out)
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in model.named_children()]
    grads = []
    with gs.watch(model, run_dir, **watch) as mon:
        for x in xs:
            outputs.clear()
            model.zero_grad()
            model(x).pow(2).mean().backward()
            grads.append(({n: p.grad.clone() for n, p in model.named_parameters()},
                          {n: p.detach().clone() for n, p in model.named_parameters()},
                          {n: [o.grad.clone() for o in outs] for n, outs in outputs.items()}))
            mon.step()
    for h in handles:
        h.remove()
    return grads


def test_weight_norm_mlp_is_judged_like_the_same_mlp_without_it(tmp_path):
    plain, normed = _sigmoid_mlp(False), _sigmoid_mlp(True)
    _train(plain, tmp_path / "plain", activations=True)
    steps = _train(normed, tmp_path / "normed", activations=True)
    a, b = gs.open_run(tmp_path / "plain"), gs.open_run(tmp_path / "normed")

    # the parametrized module is the layer: same rows, roles, depths (only the type says Parametrized)
    rows_a, rows_b = _table(a), _table(b)
    assert [r[:2] + r[3:] for r in rows_a] == [r[:2] + r[3:] for r in rows_b]
    assert [r[2] for r in rows_b if r[3] == "layer"] == ["Linear"] + ["ParametrizedLinear"] * 8 + ["Linear"]
    assert list(b.layers()["role"]) == ["weighted"] * 9 + ["head"]
    assert shown_layers(b) == shown_layers(a) == [str(2 * i) for i in range(10)]
    assert math.isfinite(first_last_ratio(b)) and first_last_ratio(b) < 1e-5
    params = b.params().set_index("name")["layer"]
    assert params["2.parametrizations.weight.original0"] == params["2.parametrizations.weight.original1"] \
        == params["2.bias"] == "2"

    # the doctor finds the same vanishing gradients
    assert "vanishing_gradients" in {f.code for f in gs.diagnose(a)}
    assert "vanishing_gradients" in {f.code for f in gs.diagnose(b)}

    # exact statistics against float64 from the originals' .grad; module rows against retain_grad
    layers = _frame(tmp_path / "normed", "layer")
    param_rows = _frame(tmp_path / "normed", "param")
    modules = _frame(tmp_path / "normed", "module")
    for step, (grad, weight, out_grads) in enumerate(steps):
        for i in range(10):
            names = [n for n in grad if n.split(".")[0] == str(2 * i)]
            _assert_stats(layers, step, "layer", str(2 * i), [grad[n] for n in names], [weight[n] for n in names])
            for n in names:
                _assert_stats(param_rows, step, "param", n, [grad[n]], [weight[n]])
            want = float(out_grads[str(2 * i)][0].double().norm())
            assert math.isclose(modules[(step, str(2 * i), "out_grad_norm")], want, rel_tol=1e-5), (step, i)


@pytest.mark.parametrize("parametrization", [weight_norm, spectral_norm, orthogonal])
def test_a_parametrized_layer_owns_its_originals_and_keeps_its_module_row(tmp_path, parametrization):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), parametrization(nn.Linear(6, 6)), nn.Tanh(), nn.Linear(6, 2))
    inv = Inventory.of(model)
    assert inv.layers == ["0", "2", "4"]
    assert {pi.name: pi.layer for pi in inv.params if pi.layer == "2"}.keys() == \
        {n for n, _ in model.named_parameters() if n.startswith("2.")}
    assert layer_modules(model) == ["0", "2", "4"]
    x = torch.randn(5, 6)
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(x).pow(2).sum().backward()
        mon.step()
    run = gs.open_run(tmp_path / "run")
    assert list(run.layers()["name"]) == ["0", "2", "4"]
    assert list(run.layers()["role"]) == ["weighted", "weighted", "head"]
    got = _frame(tmp_path / "run", "layer")
    named = [(n, p) for n, p in model.named_parameters() if n.startswith("2.")]
    _assert_stats(got, 0, "layer", "2", [p.grad for _, p in named], [p for _, p in named])
    assert (0, "2", "out_grad_norm") in _frame(tmp_path / "run", "module")


class _Scale(nn.Module):
    """A parametrization with a parameter of its own: ``W -> s * W``."""

    def __init__(self) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.tensor(1.5))

    def forward(self, w):
        return self.s * w


class _ScaledBlock(nn.Module):
    """A container with a parametrized tensor of its own (``scale``) and a submodule."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))
        self.f = nn.Linear(width, width)
        parametrize.register_parametrization(self, "scale", _Scale())

    def forward(self, x):
        return self.f(x) * self.scale


def test_parametrization_parameters_belong_to_the_parametrized_tensor(tmp_path):
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    parametrize.register_parametrization(lin, "weight", _Scale())
    model = nn.Sequential(nn.Linear(3, 4), lin, _ScaledBlock(4), nn.Linear(4, 2))
    owners = module_owners(model)
    assert owners["1.parametrizations.weight.0"] == owners["1.parametrizations"] == "1"
    assert owners["2.parametrizations.scale"] == "2" and owners["2.f"] == "2.f"
    inv = Inventory.of(model)
    layer_of = {pi.name: pi.layer for pi in inv.params}
    assert layer_of["1.parametrizations.weight.0.s"] == layer_of["1.parametrizations.weight.original"] == "1"
    # a container's parametrized tensor is a layer of its own, named by the tensor
    assert layer_of["2.parametrizations.scale.original"] == layer_of["2.parametrizations.scale.0.s"] == "2.scale"
    assert inv.layer_types["2.scale"] == "Parameter"
    with gs.watch(model, tmp_path / "run") as mon:
        model(torch.randn(5, 3)).pow(2).sum().backward()
        mon.step()
    run = gs.open_run(tmp_path / "run")
    assert list(run.layers()["name"]) == ["0", "1", "2.f", "2.scale", "3"]  # placed at its first use
    got = _frame(tmp_path / "run", "layer")
    for layer in ("1", "2.scale"):
        named = [p for n, p in model.named_parameters() if layer_of[n] == layer]
        _assert_stats(got, 0, "layer", layer, [p.grad for p in named], named)


# -- adapters and a frozen head ------------------------------------------------------------------


class _LoraLinear(nn.Module):
    """A hand-written LoRA wrapper named as PEFT names its parts: ``base(x) + B(A(x)) * scaling``."""

    def __init__(self, base: nn.Linear, r: int = 2) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ModuleDict({"default": nn.Linear(base.in_features, r, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(r, base.out_features, bias=False)})
        self.scaling = 2.0

    def forward(self, x):
        return self.base_layer(x) + self.lora_B["default"](self.lora_A["default"](x)) * self.scaling


def _lora_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
                          nn.Linear(8, 3))
    model.requires_grad_(False)
    model[2], model[4] = _LoraLinear(model[2]), _LoraLinear(model[4])
    return model


def test_lora_wrapper_is_the_layer_and_a_frozen_head_stays_the_head(tmp_path):
    model = _lora_mlp()
    inv = Inventory.of(model)
    assert inv.layers == ["2", "4"] and inv.frozen_layers == ["0", "6"]
    assert {pi.name: pi.layer for pi in inv.params if pi.name.startswith("2.")} == {
        "2.base_layer.weight": "2", "2.base_layer.bias": "2", "2.lora_A.default.weight": "2",
        "2.lora_B.default.weight": "2"}
    x = torch.randn(5, 6)
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(x).pow(2).sum().backward()
        mon.step()
    run = gs.open_run(tmp_path / "run")
    # the adapted projections are weighted layers; the frozen output layer is the head, so no recorded layer is
    assert list(zip(run.layers()["name"], run.layers()["role"])) == [("2", "weighted"), ("4", "weighted")]
    modules = run.layers(kind="module")  # frozen modules; the layers' activation statistics are on their rows
    assert dict(zip(modules["name"], modules["role"])) == {"0": "weighted", "6": "head"}
    assert {n for _, n, _ in _frame(tmp_path / "run", "module")} == {"0", "2", "4", "6"}
    # base_layer(x) + lora_B(lora_A(x)) is the adapter's update, not a residual block
    assert run.layers(kind="block").empty
    got = _frame(tmp_path / "run", "layer")
    for layer in ("2", "4"):
        named = [p for n, p in model.named_parameters() if n.startswith(f"{layer}.") and p.requires_grad]
        _assert_stats(got, 0, "layer", layer, [p.grad for p in named], named)


def test_a_frozen_output_layer_is_the_head_of_a_plain_network(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    model[4].requires_grad_(False)
    with gs.watch(model, tmp_path / "run") as mon:
        model(torch.randn(3, 4)).sum().backward()
        mon.step()
    run = gs.open_run(tmp_path / "run")
    assert list(run.layers()["role"]) == ["weighted", "weighted"]
    assert run.meta["frozen_layers"] == [["4", "Linear", 2]]  # what readers deriving roles place it by


def test_row_roles_decide_the_head_over_every_layer():
    rows = [("a", 0, "Linear", "layer"), ("b", 1, "Linear", "layer"), ("head", 2, "Linear", "module")]
    assert row_roles(rows, {}, ()) == [("weighted", 0), ("head", 0), ("weighted", 0)]
    assert row_roles(rows, {}, (), [("head", "Linear", 2)]) == [("weighted", 0), ("weighted", 0), ("head", 0)]
    assert row_roles(rows, {}, (), [("stem", "Linear", 0)]) == [("weighted", 0), ("head", 0), ("weighted", 0)]


def _tiny_llama_with_lora():
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                      tie_word_embeddings=False)
    model = peft.get_peft_model(transformers.LlamaForCausalLM(config),
                                peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                lora_dropout=0.0))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero; any values make the test stronger
            nn.init.normal_(p, std=0.02)
    return model


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_peft_lora_projections_are_layers_and_the_frozen_lm_head_is_the_head(tmp_path):
    model = _tiny_llama_with_lora()
    ids = torch.randint(0, 64, (2, 8))
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(input_ids=ids, labels=ids).loss.backward()
        mon.step()
    run = gs.open_run(tmp_path / "run")
    prefix = "base_model.model.model.layers"
    projections = [f"{prefix}.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    layers = run.layers()
    assert list(layers["name"]) == projections
    assert set(layers["role"]) == {"weighted"}  # lm_head, frozen, is the output layer
    modules = run.layers(kind="module")
    roles = dict(zip(modules["name"], modules["role"]))
    assert roles["base_model.model.lm_head"] == "head"
    assert not any(".lora_" in n or ".base_layer" in n for n in modules["name"])
    # the model's own residual addition (layer 1's attention: the MLP branch has no trainable parameter,
    # layer 0's stream does not require grad), never an adapter's low-rank branch
    assert list(run.layers(kind="block")["name"]) == [f"{prefix}.1"]
    params = run.params().set_index("name")["layer"]
    assert params[f"{prefix}.0.self_attn.q_proj.base_layer.weight"] == projections[0]
    assert params[f"{prefix}.0.self_attn.q_proj.lora_A.default.weight"] == projections[0]
    got = _frame(tmp_path / "run", "layer")
    for layer in projections:
        named = [p for n, p in model.named_parameters() if n.startswith(f"{layer}.") and p.requires_grad]
        assert len(named) == 2
        _assert_stats(got, 0, "layer", layer, [p.grad for p in named], named)
    assert (0, projections[0], "out_grad_norm") in _frame(tmp_path / "run", "module")


# -- a module called several times in one forward ------------------------------------------------


class _TwiceShared(nn.Module):
    """``head(shared(mid(shared(inp(x)))))`` with tanh between: one Linear applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(6, 2)  # registration order differs from the forward order
        self.shared = nn.Linear(6, 6)
        self.mid = nn.Linear(6, 6)
        self.inp = nn.Linear(4, 6)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.mid(h))
        h = torch.tanh(self.shared(h))
        return self.head(h)


def test_a_module_called_twice_has_one_row_pooled_over_its_calls(tmp_path):
    torch.manual_seed(0)
    model = _TwiceShared()
    x = torch.randn(5, 4)
    outs: list[torch.Tensor] = []

    def keep(module, args, out):
        out.retain_grad()
        outs.append(out)

    handle = model.shared.register_forward_hook(keep)
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(x).pow(2).sum().backward()
        mon.step()
    handle.remove()
    assert len(outs) == 2
    got = _frame(tmp_path / "run", "module")
    both = torch.cat([o.detach().double() for o in outs])
    grads = torch.cat([o.grad.double() for o in outs])
    assert math.isclose(got[(0, "shared", "out_grad_norm")], float(grads.norm()), rel_tol=1e-6)
    assert math.isclose(got[(0, "shared", "out_grad_rms")], float(grads.pow(2).mean().sqrt()), rel_tol=1e-6)
    assert math.isclose(got[(0, "shared", "act_rms")], float(both.pow(2).mean().sqrt()), rel_tol=1e-6)
    assert math.isclose(got[(0, "shared", "act_var")], float(both.var(0, unbiased=False).mean()), rel_tol=1e-5)
    # the depth of its first call; its parameters' gradient is the sum over both calls (one .grad)
    run = gs.open_run(tmp_path / "run")
    assert list(run.layers()["name"]) == ["inp", "shared", "mid", "head"]
    assert list(run.frame(level="module", stat="act_rms").sort_values("depth").name) == ["inp", "shared", "mid", "head"]
    _assert_stats(_frame(tmp_path / "run", "layer"), 0, "layer", "shared",
                  [model.shared.weight.grad, model.shared.bias.grad], [model.shared.weight, model.shared.bias])


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.f = nn.Linear(width, width)

    def forward(self, x):
        return x + torch.tanh(self.f(x))


def test_a_shared_residual_block_has_one_block_row_pooled_over_its_calls(tmp_path):
    torch.manual_seed(0)
    block = _Residual(6)
    model = nn.Sequential(nn.Linear(4, 6), block, block, block, nn.Linear(6, 2))  # ALBERT-style: one block, 3 calls
    x = torch.randn(5, 4)
    # reference: call k adds b_k = tanh(f(s_k)) to its stream s_k; the skip path passes dL/dy_k to s_k,
    # the branch path J_b(s_k)^T dL/dy_k
    streams, branches = [model[0](x)], []
    for _ in range(3):
        branches.append(torch.tanh(block.f(streams[-1])))
        streams.append(streams[-1] + branches[-1])
    loss = model[4](streams[-1]).pow(2).sum()
    skip = torch.autograd.grad(loss, streams[1:], retain_graph=True)
    branch = [torch.autograd.grad(b, s, grad_outputs=g, retain_graph=True)[0]
              for b, s, g in zip(branches, streams, skip)]
    skip_all = torch.cat([g.double().reshape(-1) for g in skip])
    branch_all = torch.cat([g.double().reshape(-1) for g in branch])
    model.zero_grad()
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(x).pow(2).sum().backward()
        mon.step()
    run = gs.open_run(tmp_path / "run")
    assert list(run.layers(kind="block")["name"]) == ["1"]  # the block's first name, once
    got = _frame(tmp_path / "run", "block")
    assert math.isclose(got[(0, "1", "skip_grad_norm")], float(skip_all.norm()), rel_tol=1e-6)
    assert math.isclose(got[(0, "1", "branch_grad_norm")], float(branch_all.norm()), rel_tol=1e-6)
    cos = float(skip_all @ branch_all) / float(skip_all.norm() * branch_all.norm())
    assert math.isclose(got[(0, "1", "skip_branch_cos")], cos, rel_tol=1e-5)
    stream_all = torch.cat([s.detach().double() for s in streams[:3]])
    assert math.isclose(got[(0, "1", "act_rms")], float(stream_all.pow(2).mean().sqrt()), rel_tol=1e-6)


def test_recurrent_layers_are_not_residual_blocks(tmp_path):
    """GRU's state update ``n + z * (h - n)`` is an addition with a parameterized operand at
    every time step and direction: it carries the state through time, not a residual stream
    through depth. The recorder used to give an nn.GRU one block row per step and
    direction (48 for 24 steps, bidirectional), at a cost growing with the sequence; now it
    claims them for the GRU (no outer module takes them) and gives no block rows."""
    import time

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(8, 16, batch_first=True, bidirectional=True)
            self.head = nn.Linear(32, 3)

        def forward(self, x):
            out, _ = self.gru(x)
            return self.head(out[:, -1])

    torch.manual_seed(0)
    model = Classifier()
    start = time.perf_counter()
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        for _ in range(3):
            model(torch.randn(4, 24, 8)).sum().backward()
            mon.step()
            model.zero_grad()
    seconds = time.perf_counter() - start
    with gs.open_run(tmp_path / "run") as run:
        assert run.layers(kind="block").empty
        assert {"gru", "head"} <= set(run.series("act_rms", "module").columns)
    calls = {n.call for n in gs.graph(model, torch.randn(2, 24, 8)).module_view().nodes if n.call}
    assert "gru" in calls and not [c for c in calls if "[" in c]  # no addition nodes of the GRU either
    assert seconds < 30
