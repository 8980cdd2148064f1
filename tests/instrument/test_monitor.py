"""The monitor's statistics against slow references, on real models and edge cases."""

from __future__ import annotations

import inspect
import io
import math
import pickle

import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.models.lecture import LectureSimpleResNet
from tests.instrument.reference import assert_matches, reference


def _train_step(model, x, y=None, loss_fn=None):
    out = model(x)
    loss = loss_fn(out, y) if loss_fn else out.float().pow(2).mean()
    loss.backward()
    return loss


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))


def test_stats_match_reference_at_every_level(tmp_path):
    model = _mlp()
    with gs.watch(model, tmp_path / "run") as mon:
        _train_step(model, torch.randn(16, 10))
        mon.step()
        ref = reference(model)
    frame = gs.open_run(tmp_path / "run").frame()
    assert_matches(frame, ref)
    assert set(frame.level) == {"param", "layer", "model"}
    assert set(frame[frame.level == "param"].name) == {n for n, _ in model.named_parameters()}


def test_model_grad_norm_equals_clip_grad_norm(tmp_path):
    model = _mlp()
    with gs.watch(model, tmp_path / "run") as mon:
        _train_step(model, torch.randn(16, 10))
        mon.step()
        clip = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e9))
    df = gs.open_run(tmp_path / "run").frame(level="model", stat="grad_norm")
    assert math.isclose(df.value.item(), clip, rel_tol=1e-6)


def test_every_k_records_every_kth_call(tmp_path):
    model = _mlp()
    with gs.watch(model, tmp_path / "run", every=3) as mon:
        recorded = []
        for _ in range(10):
            _train_step(model, torch.randn(4, 10))
            recorded.append(mon.step())
            model.zero_grad()
    assert gs.open_run(tmp_path / "run").steps() == [0, 3, 6, 9]
    assert recorded == [i % 3 == 0 for i in range(10)]


def test_schedules():
    s = gs.schedules.first_then_every(3, 5)
    assert [i for i in range(20) if s(i)] == [0, 1, 2, 3, 8, 13, 18]
    lg = gs.schedules.log_spaced(per_decade=4)
    picked = [i for i in range(2000) if lg(i)]
    assert picked[:5] == [0, 1, 2, 3, 4]
    assert 20 < len(picked) < 200  # dense early, sparse late
    with pytest.raises(ValueError):
        gs.schedules.every(0)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.body = nn.Linear(8, 8)
        self.decoder = nn.Linear(8, 20, bias=False)
        self.decoder.weight = self.embed.weight  # tied

    def forward(self, idx):
        return self.decoder(torch.tanh(self.body(self.embed(idx))))


def test_tied_parameters_counted_once(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    with gs.watch(model, tmp_path / "run") as mon:
        _train_step(model, torch.randint(0, 20, (6,)))
        mon.step()
        ref = reference(model)
        clip = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9))
    run = gs.open_run(tmp_path / "run")
    frame = run.frame()
    assert_matches(frame, ref)
    names = set(frame[frame.level == "param"].name)
    assert "embed.weight" in names and "decoder.weight" not in names
    params = run.params().set_index("name")
    assert params.loc["embed.weight", "aliases"] == ["decoder.weight"]
    model_norm = frame[(frame.level == "model") & (frame.stat == "grad_norm")].value.item()
    assert math.isclose(model_norm, clip, rel_tol=1e-6)


def test_frozen_parameters_skipped(tmp_path):
    model = _mlp()
    model[0].weight.requires_grad_(False)
    with gs.watch(model, tmp_path / "run") as mon:
        _train_step(model, torch.randn(8, 10))
        mon.step()
        ref = reference(model)
    run = gs.open_run(tmp_path / "run")
    frame = run.frame()
    assert "0.weight" not in set(frame.name)
    assert_matches(frame, ref)
    params = run.params().set_index("name")
    assert not params.loc["0.weight", "trainable"] and params.loc["0.bias", "trainable"]


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(4, 4)
        self.used = nn.Linear(4, 2)
        self.unused = nn.Linear(4, 2)

    def forward(self, x):
        return self.used(self.trunk(x))


def test_params_without_gradient_reported_as_missing(tmp_path):
    torch.manual_seed(0)
    model = TwoHeads()
    with gs.watch(model, tmp_path / "run") as mon:
        _train_step(model, torch.randn(3, 4))
        mon.step()
        ref = reference(model)
    frame = gs.open_run(tmp_path / "run").frame()
    assert_matches(frame, ref)
    missing = frame[frame.stat == "grad_missing"]
    assert set(missing[missing.level == "param"].name) == {"unused.weight", "unused.bias"}
    assert missing[missing.level == "model"].value.item() == 2
    assert frame[(frame.name == "unused.weight") & (frame.stat == "grad_norm")].empty


def test_gradient_accumulation_records_accumulated_gradient(tmp_path):
    model = _mlp()
    with gs.watch(model, tmp_path / "run") as mon:
        for _ in range(3):
            _train_step(model, torch.randn(8, 10))
        mon.step()
        ref = reference(model)
    assert_matches(gs.open_run(tmp_path / "run").frame(), ref)


def test_update_ratio_matches_weight_change(tmp_path):
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with gs.watch(model, tmp_path / "run", optimizer=opt) as mon:
        _train_step(model, torch.randn(8, 10))
        mon.step()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
    frame = gs.open_run(tmp_path / "run").frame(stat="update_ratio")
    got = {(r.level, r.name): r.value for r in frame.itertuples()}
    deltas = {n: (p.detach() - before[n]).double() for n, p in model.named_parameters()}
    for n in before:
        want = float(deltas[n].norm() / before[n].double().norm())
        assert math.isclose(got[("param", n)], want, rel_tol=1e-4)
    total = math.sqrt(sum(float(d.pow(2).sum()) for d in deltas.values()))
    wtotal = math.sqrt(sum(float(b.double().pow(2).sum()) for b in before.values()))
    assert math.isclose(got[("model", "")], total / wtotal, rel_tol=1e-4)
    layer0 = math.sqrt(float(deltas["0.weight"].pow(2).sum() + deltas["0.bias"].pow(2).sum())) / math.sqrt(
        float(before["0.weight"].double().pow(2).sum() + before["0.bias"].double().pow(2).sum()))
    assert math.isclose(got[("layer", "0")], layer0, rel_tol=1e-4)


def test_nonfinite_counted_exactly(tmp_path):
    model = _mlp()
    with gs.watch(model, tmp_path / "run") as mon:
        _train_step(model, torch.randn(8, 10))
        model[2].weight.grad[0, :3] = float("nan")
        model[2].weight.grad[1, 0] = float("inf")
        mon.step()
        ref = reference(model)
    frame = gs.open_run(tmp_path / "run").frame(stat="grad_nonfinite")
    got = {(r.level, r.name): r.value for r in frame.itertuples()}
    assert got[("param", "2.weight")] == 4 == ref[("param", "2.weight")]["grad_nonfinite"]
    assert got[("layer", "2")] == 4 and got[("model", "")] == 4
    assert got[("param", "0.weight")] == 0


def test_mixed_precision_values_unscaled_and_skips_recorded(tmp_path):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    with gs.watch(model, tmp_path / "run", optimizer=opt, scaler=scaler, update_ratio=True) as mon:
        # step 0: normal
        scaler.scale(_train_step(model, torch.randn(8, 10)) * 0 + model(torch.randn(8, 10)).pow(2).mean())
        model.zero_grad()
        loss = model(torch.randn(8, 10)).pow(2).mean()
        scaler.scale(loss).backward()
        mon.step()
        ref0 = reference(model, scale=1024.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        # step 1: an infinite gradient makes the scaler skip the step
        loss = model(torch.randn(8, 10)).pow(2).mean()
        scaler.scale(loss).backward()
        model[0].bias.grad[0] = float("inf")
        mon.step()
        before = model[4].weight.detach().clone()
        scaler.step(opt)
        scaler.update()
        assert torch.equal(before, model[4].weight)  # the scaler really skipped
        opt.zero_grad()
        # step 2: the user unscales first; values must not be unscaled twice
        loss = model(torch.randn(8, 10)).pow(2).mean()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        mon.step()
        ref2 = reference(model)
        scaler.step(opt)
        scaler.update()
    frame = gs.open_run(tmp_path / "run").frame()
    assert_matches(frame, ref0, step=0, rtol=1e-5)
    assert_matches(frame, ref2, step=2, rtol=1e-5)
    skipped = frame[frame.stat == "skipped"].set_index("step").value
    assert skipped.to_dict() == {0: 0.0, 1: 1.0, 2: 0.0}
    scale = frame[frame.stat == "loss_scale"].set_index("step").value
    assert scale[0] == 1024.0 and scale[2] == 512.0
    assert set(frame[frame.stat == "update_ratio"].step) == {0, 2}  # no update on the skipped step


def test_sparse_gradients(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(100, 16, sparse=True), nn.Linear(16, 1))
    with gs.watch(model, tmp_path / "run") as mon:
        _train_step(model, torch.tensor([1, 5, 5, 42]))
        assert model[0].weight.grad.is_sparse
        mon.step()
        ref = reference(model)
    frame = gs.open_run(tmp_path / "run").frame()
    assert_matches(frame, ref)
    zero_frac = frame[(frame.name == "0.weight") & (frame.stat == "grad_zero_frac")].value.item()
    assert math.isclose(zero_frac, 97 / 100, rel_tol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_gradients_accumulated_in_fp32(tmp_path, dtype):
    torch.manual_seed(0)
    model = nn.Linear(2048, 512).to(dtype)
    with gs.watch(model, tmp_path / "run") as mon:
        model(torch.randn(4, 2048, dtype=dtype)).float().pow(2).mean().backward()
        mon.step()
        ref = reference(model)
    frame = gs.open_run(tmp_path / "run").frame()
    # ~1M low-precision elements: summing in bf16/fp16 would be off by far more than 1e-4
    assert_matches(frame, ref, rtol=1e-4)


def test_in_place_operations_lecture_model(tmp_path):
    torch.manual_seed(0)
    model = LectureSimpleResNet()  # the lecture's code: in-place `out += identity` ...
    model.relu = nn.ReLU(inplace=True)  # ... and an in-place ReLU on top
    with gs.watch(model, tmp_path / "run") as mon:
        _train_step(model, torch.randn(2, 1, 8, 8))
        mon.step()
        ref = reference(model)
    assert_matches(gs.open_run(tmp_path / "run").frame(), ref)


def test_torchvision_resnet18(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    with gs.watch(model, tmp_path / "run") as mon:
        _train_step(model, torch.randn(2, 3, 32, 32), torch.tensor([1, 2]), nn.functional.cross_entropy)
        mon.step()
        ref = reference(model)
    run = gs.open_run(tmp_path / "run")
    assert_matches(run.frame(), ref, rtol=1e-4)
    layers = run.layers()
    assert layers.name.iloc[0] == "conv1" and layers.name.iloc[-1] == "fc"
    assert run.meta["depth_source"] == "forward"


class DefinedOutOfOrder(nn.Module):
    """Modules registered in a different order from the one they run in."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 2)
        self.middle = nn.Linear(8, 8)
        self.stem = nn.Linear(4, 8)

    def forward(self, x):
        return self.head(torch.relu(self.middle(torch.relu(self.stem(x)))))


def test_layer_depth_follows_forward_execution_not_registration(tmp_path):
    model = DefinedOutOfOrder()
    with gs.watch(model, tmp_path / "run") as mon:
        _train_step(model, torch.randn(3, 4))
        mon.step()
    run = gs.open_run(tmp_path / "run")
    assert list(run.layers().name) == ["stem", "middle", "head"]
    frame = run.frame(level="param", stat="grad_norm")
    assert dict(zip(frame.name, frame.depth)) == {
        "stem.weight": 0, "stem.bias": 0, "middle.weight": 1, "middle.bias": 1, "head.weight": 2, "head.bias": 2}


def test_compiled_model(tmp_path):
    torch.manual_seed(0)
    model = _mlp()
    compiled = torch.compile(model, backend="aot_eager")
    with gs.watch(compiled, tmp_path / "run") as mon:
        for _ in range(2):
            _train_step(compiled, torch.randn(8, 10))
            mon.step()
        ref = reference(compiled)
    frame = gs.open_run(tmp_path / "run").frame()
    assert_matches(frame, ref, step=1)
    assert {n for n, _ in compiled.named_parameters()} == set(frame[frame.level == "param"].name)


def _hook_state(model):
    state = []
    for m in model.modules():
        state.append((len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                      len(getattr(m, "_backward_pre_hooks", {}))))
    return state


@pytest.mark.parametrize("raise_inside", [False, True])
def test_close_restores_model(tmp_path, raise_inside):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hooks_before = _hook_state(model)
    opt_hooks_before = (len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks))
    try:
        with gs.watch(model, tmp_path / "run", optimizer=opt) as mon:
            _train_step(model, torch.randn(8, 10))
            mon.step()
            opt.step()
            if raise_inside:
                raise KeyError("boom")
    except KeyError:
        pass
    assert _hook_state(model) == hooks_before
    assert (len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks)) == opt_hooks_before
    pickle.loads(pickle.dumps(model))
    buf = io.BytesIO()
    torch.save(model, buf)
    x = torch.randn(4, 10)
    buf.seek(0)
    clone = torch.load(buf, weights_only=False)
    assert torch.equal(clone(x), model(x))
    run = gs.open_run(tmp_path / "run")
    assert run.status == ("failed" if raise_inside else "finished")
    if raise_inside:
        assert "boom" in run.meta["error"]
    mon.close()  # idempotent


def test_step_after_close_raises(tmp_path):
    model = _mlp()
    mon = gs.watch(model, tmp_path / "run")
    mon.close()
    with pytest.raises(RuntimeError):
        mon.step()


def test_watch_rejects_non_module(tmp_path):
    with pytest.raises(TypeError):
        gs.watch("not a model", tmp_path / "run")


def test_fused_backend_matches_eager(tmp_path):
    """The compiled single-pass kernel gives the same numbers as the eager passes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 5))
    x = torch.randn(16, 300)
    frames = {}
    for backend in ("eager", "fused"):
        model.zero_grad()
        with gs.watch(model, tmp_path / backend, backend=backend) as mon:
            _train_step(model, x)
            model[0].weight.grad[0, 0] = float("nan")
            mon.step()
        frames[backend] = gs.open_run(tmp_path / backend).frame().set_index(["level", "name", "stat"]).value
    ref = reference(model)
    assert_matches(gs.open_run(tmp_path / "fused").frame(), {k: v for k, v in ref.items()}, rtol=1e-5)
    a, b = frames["eager"], frames["fused"]
    assert a.index.equals(b.index)
    both_nan = a.isna() & b.isna()
    assert ((a - b).abs() <= 1e-5 * b.abs() + 1e-7)[~both_nan].all()


@pytest.mark.parametrize("backend", ["eager", "fused"])
def test_weights_false_skips_weight_statistics(tmp_path, backend):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "run", weights=False, backend=backend, optimizer=opt) as mon:
        _train_step(model, torch.randn(4, 300))
        mon.step()
        ref = reference(model)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
    frame = gs.open_run(tmp_path / "run").frame()
    assert not {"weight_norm", "grad_weight_ratio"} & set(frame.stat)
    trimmed = {k: {s: v for s, v in st.items() if s not in ("weight_norm", "grad_weight_ratio")} for k, st in ref.items()}
    assert_matches(frame, trimmed)
    got = frame[(frame.stat == "update_ratio") & (frame.name == "0.weight")].value.item()
    want = float((model[0].weight.detach() - before["0.weight"]).double().norm() / before["0.weight"].double().norm())
    assert math.isclose(got, want, rel_tol=1e-4)


def test_listeners_see_what_the_store_gets(tmp_path):
    model = _mlp()
    seen, closed = {}, []

    def listener(step, keys, values):
        for key, value in zip(keys, values.tolist()):
            seen[(step, *key)] = value

    def broken(step, keys, values):
        raise ValueError("listener bug")

    with gs.watch(model, tmp_path / "run") as mon:
        remove = mon.add_listener(listener, on_close=lambda: closed.append(True))
        mon.add_listener(broken)  # logged, never raised into training
        _train_step(model, torch.randn(4, 10))
        mon.step()
        mon.log({"val_acc": 0.5})
    frame = gs.open_run(tmp_path / "run").frame()
    stored = {(r.step, r.level, r.name, r.stat): r.value for r in frame.itertuples()}
    assert seen.keys() == stored.keys()
    assert all(math.isclose(seen[k], v, rel_tol=1e-6) or (math.isnan(v) and math.isnan(seen[k])) for k, v in stored.items())
    assert closed == [True]
    remove()


class ReZeroLinear(nn.Module):
    """``y = x + alpha * tanh(x W^T)``: a residual block that owns its parameters (no submodules)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width, width) / width**0.5)
        self.alpha = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        return x + self.alpha * torch.tanh(x @ self.weight.T)


class ReZeroNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 2)
        self.block = ReZeroLinear(8)
        self.stem = nn.Linear(4, 8)

    def forward(self, x):
        return self.head(self.block(torch.tanh(self.stem(x))))


def test_rezero_block_keeps_its_layer_row(tmp_path):
    torch.manual_seed(0)
    model = ReZeroNet()
    with gs.watch(model, tmp_path / "run", activations=True, residual_blocks=["block"]) as mon:
        for _ in range(2):
            _train_step(model, torch.randn(5, 4))
            mon.step()
            model.zero_grad()
    run = gs.open_run(tmp_path / "run")
    layers = run.layers()
    assert list(layers.name) == ["stem", "block", "head"] and list(layers.depth) == [0, 1, 2]
    assert list(run.layers("block").name) == ["block"]
    assert list(run.layers("block").depth) == [0]
    assert list(run.series("grad_norm").columns) == ["stem", "block", "head"]
    frame = run.frame()
    assert not frame.duplicated(["step", "level", "name", "stat"]).any()
    depth = {(r.level, r.name): r.depth for r in frame.itertuples()}
    assert depth[("layer", "block")] == 1 and depth[("param", "block.alpha")] == 1
    assert depth[("block", "block")] == 0
    assert run.params().set_index("name").loc["block.weight", "depth"] == 1


def test_watch_shows_monitor_keywords():
    watch_params = inspect.signature(gs.watch).parameters
    assert watch_params == inspect.signature(gs.Monitor).parameters
    assert list(watch_params)[2:] == ["every", "optimizer", "scaler", "config", "name", "backend", "overwrite",
                                      "resume", "distributed", "activations", "residual_blocks", "weights",
                                      "histograms", "update_ratio", "through_time", "noise_scale"]
    for keyword in list(watch_params)[2:]:
        assert f"{keyword}:" in gs.watch.__doc__


class TokenNet(nn.Module):
    """A class token used first and a learned temperature used last, both owned by the model itself."""

    def __init__(self) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.tensor(2.0))
        self.head = nn.Linear(4, 3)
        self.body = nn.Linear(4, 4)
        self.class_token = nn.Parameter(torch.randn(1, 1, 4))

    def forward(self, x):  # x: [N, T, 4]
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.head(torch.tanh(self.body(x))[:, 0]) / self.temperature


def test_parameters_owned_by_the_model_are_placed_where_first_used(tmp_path):
    torch.manual_seed(0)
    model = TokenNet()
    with gs.watch(model, tmp_path / "run") as mon:
        _train_step(model, torch.randn(2, 5, 4))
        mon.step()
        ref = reference(model)
    run = gs.open_run(tmp_path / "run")
    layers = run.layers()
    assert list(layers.name) == ["class_token", "body", "head", "temperature"]
    assert list(layers.depth) == [0, 1, 2, 3]
    assert dict(zip(layers.name, layers.module_type))["temperature"] == "Parameter"
    assert run.meta["depth_source"] == "forward" and run.meta["depth_unplaced"] == []
    params = run.params().set_index("name")
    assert params.loc["temperature", "layer"] == "temperature" and params.loc["temperature", "depth"] == 3
    assert_matches(run.frame(), ref)
    assert list(run.series("grad_norm").columns) == ["class_token", "body", "head", "temperature"]


def test_parameter_owned_by_a_container_that_is_never_used_is_recorded_as_unplaced(tmp_path):
    model = TokenNet()
    model.unused = nn.Parameter(torch.zeros(3))
    with gs.watch(model, tmp_path / "run") as mon:
        _train_step(model, torch.randn(2, 5, 4))
        mon.step()
    run = gs.open_run(tmp_path / "run")
    assert list(run.layers().name) == ["class_token", "body", "head", "temperature", "unused"]
    assert run.meta["depth_source"] == "forward+registration"
    assert run.meta["depth_unplaced"] == ["unused"]


class ReZeroBlock(nn.Module):
    """``y = x + alpha * f(x)`` with ``alpha`` owned by the block and ``f`` a submodule."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.f = nn.Sequential(nn.Linear(width, width), nn.Tanh())

    def forward(self, x):
        return x + self.alpha * self.f(x)


def test_rezero_container_block_alpha_is_a_layer_after_its_branch(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), ReZeroBlock(8), ReZeroBlock(8), nn.Linear(8, 2))
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        _train_step(model, torch.randn(5, 4))
        mon.step()
        ref = reference(model)
    run = gs.open_run(tmp_path / "run")
    assert list(run.layers().name) == ["0", "1.f.0", "1.alpha", "2.f.0", "2.alpha", "3"]
    assert list(run.layers("block").name) == ["1", "2"]
    assert_matches(run.frame(), ref)


def test_vision_transformer_class_token_and_position_embedding_placed_by_use(tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                        mlp_dim=64, num_classes=5)
    with gs.watch(model, tmp_path / "run") as mon:
        _train_step(model, torch.randn(2, 3, 32, 32))
        mon.step()
        ref = reference(model)
    run = gs.open_run(tmp_path / "run")
    names = list(run.layers().name)
    assert "" not in names  # no layer at the position of the whole model
    assert names[:3] == ["conv_proj", "class_token", "encoder.pos_embedding"]
    assert names.index("encoder.pos_embedding") < names.index("encoder.layers.encoder_layer_0.ln_1")
    # nn.MultiheadAttention uses out_proj's weights without calling it: placed where they are used
    attention = "encoder.layers.encoder_layer_0.self_attention"
    assert names.index(f"{attention}.in_proj_weight") < names.index(f"{attention}.out_proj")
    assert names.index(f"{attention}.out_proj") < names.index("encoder.layers.encoder_layer_0.ln_2")
    assert names[-1] == "heads.head"
    assert run.meta["depth_source"] == "forward"
    assert_matches(run.frame(), ref)


class Failing(TokenNet):
    def forward(self, x):
        super().forward(x)
        raise RuntimeError("bad batch")


def test_first_forward_that_raises_leaves_no_torch_function_mode_behind(tmp_path):
    model = Failing()
    depth = torch._C._len_torch_function_stack()
    with gs.watch(model, tmp_path / "run"):
        with pytest.raises(RuntimeError, match="bad batch"):
            model(torch.randn(2, 5, 4))
        assert torch._C._len_torch_function_stack() == depth


def test_zero_size_parameter_is_recorded(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 0))  # an empty weight and bias
    with gs.watch(model, tmp_path / "run") as mon:
        model(torch.randn(2, 4)).sum().backward()
        mon.step()
    frame = gs.open_run(tmp_path / "run").frame(level="param", stat="grad_norm")
    assert dict(zip(frame.name, frame.value))["1.weight"] == 0.0


def test_float64_model_is_recorded_with_update_ratios(tmp_path):
    """Regression: a float64 model crashed monitor.step() (a float32 norm of a float64 tensor)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "run", optimizer=opt) as monitor:
        model(torch.randn(3, 4, dtype=torch.float64)).sum().backward()
        grads = {n: p.grad.norm().item() for n, p in model.named_parameters()}
        monitor.step()
        opt.step()
    with gs.open_run(tmp_path / "run") as run:
        got = run.frame(level="param", stat="grad_norm").set_index("name")["value"]
        assert run.stats("layer") and "update_ratio" in run.stats("layer")
    assert got.to_dict() == pytest.approx(grads, rel=1e-6)
