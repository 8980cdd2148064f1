"""The computation graph: structure, skip connections, colouring, DOT text (golden files), rendering.

Golden files live in tests/compgraph/golden/; after an intended change of the DOT output,
regenerate them with ``GRADSIGHT_UPDATE_GOLDEN=1 python -m pytest tests/compgraph`` and review the diff.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.compgraph import Graph, trace
from gradsight.compgraph.dot import quote
from gradsight.models import create_model
from gradsight.models.lecture import LectureSimpleResNet

GOLDEN = Path(__file__).parent / "golden"
render_mod = importlib.import_module("gradsight.compgraph.render")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(3, 4), act=nn.ReLU(), fc2=nn.Linear(4, 2)))


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("GRADSIGHT_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden file {path}; create it with GRADSIGHT_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8")


# -- golden DOT ------------------------------------------------------------------------------------
def test_dot_of_a_small_mlp_with_values_matches_the_golden_file():
    values = {"fc1": 1e-3, "fc2": 0.1, "fc1.weight": 2e-3, "fc1.bias": 5e-4, "fc2.weight": 0.08, "fc2.bias": 0.05}
    g = gs.graph(tiny_mlp(), torch.zeros(2, 3), values=values)
    check_golden("mlp_autograd.dot", g.to_dot())
    check_golden("mlp_module.dot", g.module_view().to_dot())


def test_dot_of_the_lectures_inplace_simpleresnet_matches_the_golden_file():
    g = gs.graph(LectureSimpleResNet(), torch.randn(1, 1, 28, 28), probe=False)
    check_golden("lecture_simpleresnet_autograd.dot", g.to_dot())
    check_golden("lecture_simpleresnet_module.dot", g.module_view().to_dot())


def test_graph_ids_and_dot_are_deterministic():
    a = gs.graph(create_model("inplace_resnet"), torch.randn(2, 3, 16, 16), probe=False)
    b = gs.graph(create_model("inplace_resnet"), torch.randn(2, 3, 16, 16), probe=False)
    assert a.to_dot() == b.to_dot()
    assert [n.id for n in a.nodes] == [n.id for n in b.nodes]


# -- structure ---------------------------------------------------------------------------------
def test_lectures_inplace_add_is_a_skip_edge_from_the_input():
    g = trace(LectureSimpleResNet(), torch.randn(1, 1, 28, 28), probe=False)
    by_id = {n.id: n for n in g.nodes}
    (skip,) = g.skip_edges
    assert by_id[skip.src].kind == "input"
    assert by_id[skip.dst].label == "AddBackward0"
    assert by_id[skip.dst].call == ""  # the add runs in the model's own forward
    params = sorted(n.label for n in g.nodes if n.kind == "param")
    assert params == ["conv1.bias", "conv1.weight", "conv2.bias", "conv2.weight"]
    dot = g.to_dot()
    assert f'{quote(skip.src)} -> {quote(skip.dst)} [color="#e07b00", style="dashed"' in dot


def test_module_view_gives_each_call_of_a_reused_module_its_own_node():
    g = trace(LectureSimpleResNet(), torch.randn(1, 1, 28, 28), probe=False).module_view()
    ids = [n.id for n in g.nodes]
    assert ids == ["input0", "module:conv1", "module:relu", "module:conv2", "op3", "module:relu#2", "output0"]
    assert [(e.src, e.dst) for e in g.skip_edges] == [("input0", "op3")]


def test_torchvision_style_inplace_blocks_have_skips_and_a_projection_shortcut():
    g = trace(create_model("inplace_resnet"), torch.randn(2, 3, 16, 16), probe=False)
    by_id = {n.id: n for n in g.nodes}
    into_add = [e for e in g.skip_edges if by_id[e.dst].label == "AddBackward0"]
    assert len(into_add) == 2  # one per block, both adds are the in-place `out += identity`
    shortcut_calls = {by_id[e.dst].call for e in g.skip_edges if by_id[e.dst].call}
    assert {"layer2.0.downsample.0", "layer2.0.downsample.1"} <= shortcut_calls
    folded = g.module_view(max_nesting=1)
    assert [n.label for n in folded.nodes if n.kind == "module"] == ["conv1", "bn1", "relu", "layer1", "layer2",
                                                                      "avgpool", "fc"]


def test_max_depth_is_a_deprecated_name_of_max_nesting():
    g = trace(create_model("inplace_resnet"), torch.randn(2, 3, 16, 16), probe=False)
    with pytest.warns(DeprecationWarning, match="max_nesting") as warned:
        old = g.module_view(max_depth=1)
    assert old == g.module_view(max_nesting=1) == g.module_view(1)
    with pytest.warns(DeprecationWarning, match="max_nesting") as warned_too:
        old = gs.graph(create_model("inplace_resnet"), torch.randn(2, 3, 16, 16), view="module", max_depth=1,
                       probe=False)
    assert [n.label for n in old.nodes] == [n.label for n in g.module_view(1).nodes]
    assert warned[0].filename == warned_too[0].filename == __file__  # the warning names the caller's line
    with pytest.raises(TypeError, match="max_nesting only"):
        g.module_view(max_nesting=1, max_depth=1)


def test_plain_network_has_no_skip_edges_and_residual_twin_has_one_per_block():
    plain = trace(create_model("mlp", depth=6, width=8, in_features=4), torch.randn(2, 4), probe=False)
    residual = trace(create_model("resmlp", depth=6, width=8, in_features=4), torch.randn(2, 4), probe=False)
    assert plain.skip_edges == []
    assert len(residual.skip_edges) == 2
    assert len(residual.module_view().skip_edges) == 2


def test_torchvision_resnet18_has_the_skip_path_of_each_of_its_blocks():
    """Skips are those of the blocks found in the autograd graph: 5 identities (one edge into
    the add) and 3 projections (input -> conv -> bn -> add)."""
    torchvision = pytest.importorskip("torchvision")
    g = trace(torchvision.models.resnet18(weights=None, num_classes=3), torch.randn(2, 3, 32, 32), probe=False)
    by_id = {n.id: n for n in g.nodes}
    into_add = [e for e in g.skip_edges if by_id[e.dst].label == "AddBackward0"]
    assert len(into_add) == 8 and len(g.skip_edges) == 5 + 3 * 3
    assert {by_id[e.dst].call for e in g.skip_edges if by_id[e.dst].type == "Convolution"} == {
        "layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"}


def test_residual_adds_outside_a_block_module_are_not_skips():
    """The same rule as the monitor's block rows: an add written inline in a model's forward,
    followed by more layers, belongs to no block."""
    from tests.plots.runs import TinyNet

    assert trace(TinyNet(depth=2, skip=True), torch.randn(2, 4), probe=False).skip_edges == []


def test_probe_values_equal_the_lectures_backward_of_ones_and_leave_grads_alone():
    model = create_model("simple_resnet", width=8)
    x = torch.randn(2, 1, 12, 12)
    g = gs.graph(model, x)
    assert all(p.grad is None for p in model.parameters())
    reference = copy.deepcopy(model)
    out = reference(x)
    out.backward(torch.ones_like(out))  # the lecture's plot_gradients
    values = {n.label: n.value for n in g.nodes if n.kind == "param"}
    for name, p in reference.named_parameters():
        assert values[name] == pytest.approx(p.grad.norm().item(), rel=1e-5)
    layer_norm = sum(p.grad.pow(2).sum() for n, p in reference.named_parameters() if n.startswith("block.branch.conv1."))
    conv1 = next(n for n in g.nodes if n.kind == "op" and n.layer == "block.branch.conv1")
    assert conv1.value == pytest.approx(layer_norm.sqrt().item(), rel=1e-5)


def test_tracing_restores_batchnorm_running_statistics():
    model = create_model("inplace_resnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gs.graph(model, torch.randn(2, 3, 16, 16))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_colour_by_a_run_uses_the_mean_over_its_steps(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "run", optimizer=opt) as mon:
        for _ in range(3):
            model(torch.randn(4, 3)).pow(2).mean().backward()
            mon.step()
            opt.step()
            opt.zero_grad()
    g = gs.graph(model, torch.zeros(2, 3), tmp_path / "run")
    with gs.open_run(tmp_path / "run") as run:
        mean = run.layer_summary("grad_norm").set_index("name")["mean"]
        param_mean = run.frame(level="param", stat="grad_norm").groupby("name")["value"].mean()
    ops = {n.layer: n.value for n in g.nodes if n.kind == "op" and n.layer}
    assert ops["fc1"] == pytest.approx(mean["fc1"]) and ops["fc2"] == pytest.approx(mean["fc2"])
    params = {n.label: n.value for n in g.nodes if n.kind == "param"}
    assert params["fc2.bias"] == pytest.approx(param_mean["fc2.bias"])
    assert "mean over 3 steps" in g.stat_label


def test_save_and_load_round_trip(tmp_path):
    g = gs.graph(LectureSimpleResNet(), torch.randn(1, 1, 8, 8))
    g2 = Graph.load(g.save(tmp_path / "graph.json"))
    assert g2 == g
    assert g2.to_dot() == g.to_dot()


# -- escaping and rendering -----------------------------------------------------------------------
class Hostile(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module('<script>alert(1)</script>', nn.Linear(3, 3))
        self.add_module('quote"back\\slash', nn.Linear(3, 2))

    def forward(self, x):
        return getattr(self, 'quote"back\\slash')(getattr(self, "<script>alert(1)</script>")(x))


def test_dot_escapes_quotes_and_backslashes_in_module_names():
    dot = gs.graph(Hostile(), torch.randn(2, 3)).module_view().to_dot()
    assert '"module:quote\\"back\\\\slash"' in dot
    assert 'label="quote\\"back\\\\slash' in dot


@needs_dot
def test_hostile_names_survive_graphviz_as_escaped_text(tmp_path):
    path = gs.graph(Hostile(), torch.randn(2, 3)).render(tmp_path / "g.svg")
    svg = path.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    assert "<script>" not in svg


@needs_dot
@pytest.mark.parametrize("suffix", ["svg", "png", "pdf"])
def test_render_with_graphviz(tmp_path, suffix):
    g = gs.graph(create_model("resmlp", depth=4, width=8, in_features=4), torch.randn(2, 4))
    path = g.render(tmp_path / f"graph.{suffix}")
    assert path == tmp_path / f"graph.{suffix}"
    head = path.read_bytes()[:8]
    assert {"svg": b"<?xml", "png": b"\x89PNG", "pdf": b"%PDF"}[suffix] in head


@needs_dot
def test_rendered_svg_styles_skip_edges():
    from gradsight.compgraph.render import dot_to_svg

    g = gs.graph(LectureSimpleResNet(), torch.randn(1, 1, 8, 8), probe=False)
    svg = dot_to_svg(g.to_dot())
    assert svg.count('class="edge gs_skip"') == 1
    assert 'stroke-dasharray="5,2"' in svg


def test_without_graphviz_the_dot_file_is_written_with_instructions(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(render_mod, "dot_binary", lambda: None)
    g = gs.graph(tiny_mlp(), torch.zeros(2, 3))
    with caplog.at_level(logging.WARNING, logger="gradsight.compgraph.render"):
        path = g.render(tmp_path / "graph.svg")
    assert path == tmp_path / "graph.dot"
    assert path.read_text() == g.to_dot()
    assert "dot -Tsvg" in caplog.text and "apt-get install graphviz" in caplog.text
    assert not (tmp_path / "graph.svg").exists()


def test_trace_inputs_come_from_the_registry_not_the_first_layer():
    from gradsight.compgraph import trace_inputs_for

    assert trace_inputs_for(create_model("resnet20", in_channels=1)).shape == (2, 1, 32, 32)
    assert trace_inputs_for(create_model("mlp", in_features=12), batch=3).shape == (3, 12)
    with pytest.raises(ValueError, match="is not known"):
        trace_inputs_for(nn.Linear(4, 2))


def _cycle(graph) -> tuple[str, str] | None:
    """An edge that closes a cycle, or None."""
    succ: dict[str, list[str]] = {}
    for e in graph.edges:
        succ.setdefault(e.src, []).append(e.dst)
    state: dict[str, int] = {}
    for start in [n.id for n in graph.nodes]:
        if start in state:
            continue
        state[start] = 1
        stack = [(start, iter(succ.get(start, [])))]
        while stack:
            node, it = stack[-1]
            for nxt in it:
                if state.get(nxt) == 1:
                    return node, nxt
                if nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, iter(succ.get(nxt, []))))
                    break
            else:
                state[node] = 2
                stack.pop()
    return None


def test_pre_ln_transformer_module_view_has_one_node_per_addition_and_no_cycle():
    from tests.instrument.test_residual_additions import TinyGPT

    g = trace(TinyGPT(depth=2, width=8, heads=2), torch.randint(0, 50, (2, 8)), probe=False)
    view = g.module_view()
    adds = [n.label for n in view.nodes if n.label.endswith("]")]
    assert adds == ["blocks.0[attn]", "blocks.0[mlp]", "blocks.1[attn]", "blocks.1[mlp]"]
    assert [(e.src, e.dst) for e in view.skip_edges][1:] == [
        ("module:blocks.0[attn]", "module:blocks.0[mlp]"), ("module:blocks.0[mlp]", "module:blocks.1[attn]"),
        ("module:blocks.1[attn]", "module:blocks.1[mlp]")]
    for nesting in (None, 0, 1, 2, 3):
        assert _cycle(g.module_view(max_nesting=nesting)) is None, nesting
    assert [n.label for n in g.module_view(max_nesting=2).nodes if n.kind == "module"][2:4] == ["blocks.0", "blocks.1"]


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_hugging_face_module_views_have_no_cycle(family):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = {
        "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32)),
        "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=100, max_position_embeddings=64)),
        "bert": lambda: transformers.BertForMaskedLM(transformers.BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100,
            max_position_embeddings=64)),
    }[family]()
    g = trace(model, {"input_ids": torch.randint(0, 100, (2, 8))}, probe=False)
    view = g.module_view()
    assert _cycle(view) is None
    assert len(view.skip_edges) >= 4
    if family == "gpt2":
        assert [n.label for n in view.nodes if n.label.endswith("]")] == [
            f"transformer.h.{i}[{b}]" for i in range(2) for b in ("attn", "mlp")]
    for nesting in range(5):
        assert _cycle(g.module_view(max_nesting=nesting)) is None, nesting


def test_graph_layers_are_the_runs_layers_for_parametrized_modules(tmp_path):
    """Regression: the graph took a parameter's layer to be its name minus the last part, so a
    weight-normed Linear's originals belonged to 'lin.parametrizations.weight', a layer the
    run does not have, and were not coloured by its values."""
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    net = torch.nn.Sequential(weight_norm(torch.nn.Linear(4, 8)), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    with gs.watch(net, tmp_path / "run") as monitor:
        for _ in range(2):
            net(torch.randn(3, 4)).sum().backward()
            monitor.step()
            net.zero_grad()
    run_layers = list(gs.open_run(tmp_path / "run").layers()["name"])
    graph = gs.graph(net, torch.randn(3, 4), run=tmp_path / "run")
    params = {n.label: n.layer for n in graph.nodes if n.kind == "param"}
    assert params["0.parametrizations.weight.original0"] == "0" and params["0.bias"] == "0"
    assert {n.layer for n in graph.nodes if n.layer is not None} == set(run_layers) == {"0", "2"}


def test_an_adapters_update_is_no_skip_connection_in_the_graph():
    """A LoRA-style wrapper's ``base_layer(x) + lora_B(lora_A(x))`` is the adapter's update of
    the layer it wraps (as in the run's block rows), not a residual block; the model's own
    addition still is."""

    class Lora(torch.nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.base_layer = torch.nn.Linear(width, width)
            self.base_layer.requires_grad_(False)
            self.lora_A = torch.nn.Linear(width, 2, bias=False)
            self.lora_B = torch.nn.Linear(2, width, bias=False)

        def forward(self, x):
            return self.base_layer(x) + self.lora_B(self.lora_A(x))

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = Lora(6)
            self.mlp = torch.nn.Linear(6, 6)

        def forward(self, x):
            h = self.proj(x)
            return h + self.mlp(torch.tanh(h))

    torch.manual_seed(0)
    graph = gs.graph(Net(), torch.randn(3, 6))
    (skip,) = graph.skip_edges  # the model's own addition only (the adapter's made two more)
    assert graph.node(skip.dst).label == "AddBackward0" and graph.node(skip.src).kind != "input"
    params = {n.label: n.layer for n in graph.nodes if n.kind == "param"}
    assert params["proj.lora_A.weight"] == params["proj.lora_B.weight"] == "proj"
