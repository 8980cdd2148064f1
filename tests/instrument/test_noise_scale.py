"""The gradient noise scale (``noise_scale=``) against the exact value from per-example gradients,
DDP against gradient accumulation on the same micro-batches, and its refusals."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import gradsight as gs
from gradsight.stats.noise_scale import EMA_BETA, unbiased
from tests.instrument import noise_workers

N = 512  #: the fixed dataset's samples
MICRO = 8  #: samples per micro-batch
ACCUMULATE = 4  #: micro-batches per step
STEPS = 400


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1)).double()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N, 6, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True)) + 0.3 * torch.randn(N, 1, generator=g, dtype=torch.float64)
    return x, y


def _exact(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, tuple[float, float]]:
    """``{layer or '': (|G|², tr(Σ))}`` from the per-example gradients of the whole dataset (float64):
    ``G`` their mean, ``Σ`` their covariance over the dataset (micro-batches are drawn from it with
    replacement, so ``E|G_B|² = |G|² + tr(Σ)/B`` holds exactly)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return (functional_call(model, p, (xi[None],)) - yi[None]).pow(2).mean()

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    out, total = {}, [0.0, 0.0]
    for layer in ("0", "2"):
        g = torch.cat([per_example[f"{layer}.{k}"].reshape(N, -1) for k in ("weight", "bias")], 1)
        mean = g.mean(0)
        grad_sq, trace = float(mean.square().sum()), float((g - mean).square().sum(1).mean())
        out[layer] = (grad_sq, trace)
        total = [total[0] + grad_sq, total[1] + trace]
    out[""] = tuple(total)
    return out


@pytest.fixture(scope="module")
def estimated(tmp_path_factory) -> tuple[dict, object]:
    """``STEPS`` steps of ``ACCUMULATE`` micro-batches drawn with replacement, weights fixed."""
    model = _model()
    x, y = _data()
    pick = torch.Generator().manual_seed(3)
    run_dir = tmp_path_factory.mktemp("gns") / "run"
    with gs.watch(model, run_dir, noise_scale=MICRO, backend="eager") as monitor:
        for _ in range(STEPS):
            for _ in range(ACCUMULATE):
                idx = torch.randint(0, N, (MICRO,), generator=pick)
                ((model(x[idx]) - y[idx]).pow(2).mean() / ACCUMULATE).backward()
            monitor.step()
            model.zero_grad()
    return _exact(model, x, y), gs.open_run(run_dir)


@pytest.mark.parametrize("layer", ["0", "2", ""])
def test_the_estimates_average_to_the_exact_values(estimated, layer):
    exact, run = estimated
    level = "model" if layer == "" else "layer"
    for stat, want in zip(("gns_grad_sq", "gns_trace"), exact[layer]):
        got = run.series(stat, level).iloc[:, 0] if layer == "" else run.series(stat, level)[layer]
        assert len(got) == STEPS
        assert got.mean() == pytest.approx(want, rel=0.10), f"{level} {layer!r} {stat}"


def test_the_noise_scale_is_the_ratio_of_moving_averages(estimated):
    exact, run = estimated
    grad_sq = run.series("gns_grad_sq", "model").iloc[:, 0].to_numpy()
    trace = run.series("gns_trace", "model").iloc[:, 0].to_numpy()
    gns = run.series("gns", "model").iloc[:, 0].to_numpy()
    weights = EMA_BETA ** np.arange(STEPS)[::-1]  # the last step weighs most
    for t in (0, 10, STEPS - 1):
        w = weights[STEPS - 1 - t:]
        assert gns[t] == pytest.approx((w * trace[:t + 1]).sum() / (w * grad_sq[:t + 1]).sum(), rel=1e-5)
    b_simple = exact[""][1] / exact[""][0]
    assert np.median(gns[STEPS // 4:]) == pytest.approx(b_simple, rel=0.25)
    assert set(run.series("gns_batch", "model").iloc[:, 0]) == {MICRO * ACCUMULATE}
    assert run.meta["noise_scale"] == {"micro_batch_size": MICRO, "ema_beta": EMA_BETA}


def test_unbiased_inverts_the_expected_norms():
    grad_sq, trace, b, m = 2.0, 30.0, 4.0, 3
    small = torch.tensor(grad_sq + trace / b, dtype=torch.float64)  # E|G_b|^2
    big = torch.tensor(grad_sq + trace / (m * b), dtype=torch.float64)  # E|G_mb|^2
    got = unbiased(small, big, m, b)
    assert [float(v) for v in got] == pytest.approx([grad_sq, trace])


def _accumulated(model: nn.Module, run_dir: Path, loss_divisor: float) -> dict:
    """One step of two micro-batches; the model-level estimates."""
    torch.manual_seed(5)
    batches = [torch.randn(8, 6, dtype=torch.float64) for _ in range(2)]
    values = {}

    def listener(step, keys, vals):
        values.update({k[2]: v for k, v in zip(keys, vals) if k[0] == "model" and k[2].startswith("gns")})

    with gs.watch(model, run_dir, noise_scale=8, backend="eager") as monitor:
        monitor.add_listener(listener)
        for xb in batches:
            (model(xb).pow(2).mean() / loss_divisor).backward()
        monitor.step()
    model.zero_grad()
    return values


def test_the_loss_division_changes_no_noise_scale(tmp_path):
    model = _model()
    divided, summed = _accumulated(model, tmp_path / "divided", 2.0), _accumulated(model, tmp_path / "summed", 1.0)
    assert divided["gns"] == pytest.approx(summed["gns"], rel=1e-6)
    # the gradient of a sum of two means is twice that of their mean: both estimates 4x
    assert summed["gns_grad_sq"] == pytest.approx(4 * divided["gns_grad_sq"], rel=1e-6)


def test_one_micro_batch_on_one_process_says_so_once_and_records_nothing(tmp_path):
    model = _model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gs.watch(model, tmp_path / "run", noise_scale=True, backend="eager") as monitor:
            for _ in range(3):
                model(torch.randn(4, 6, dtype=torch.float64)).sum().backward()
                monitor.step()
                model.zero_grad()
    said = [w for w in caught if "two batch sizes" in str(w.message)]
    assert len(said) == 1
    run = gs.open_run(tmp_path / "run")
    assert not [s for s in run.stats("model") if s.startswith("gns")]
    assert run.steps() == [0, 1, 2]


def test_steps_that_are_not_recorded_measure_nothing(tmp_path):
    model = _model()
    with gs.watch(model, tmp_path / "run", noise_scale=True, every=2, backend="eager") as monitor:
        for _ in range(4):
            for _ in range(3):
                model(torch.randn(4, 6, dtype=torch.float64)).sum().backward()
            if not monitor.should_record():
                assert monitor._noise._written == 0
            monitor.step()
            model.zero_grad()
    run = gs.open_run(tmp_path / "run")
    assert list(run.series("gns_batch", "model").index) == [0, 2]
    assert set(run.series("gns_batch", "model").iloc[:, 0]) == {3.0}  # micro-batches: no size given


def test_close_removes_the_hooks(tmp_path):
    model = _model()
    with gs.watch(model, tmp_path / "run", noise_scale=True):
        assert all(p._backward_hooks for p in model.parameters())
    assert not any(p._backward_hooks for p in model.parameters())


def test_noise_scale_is_checked():
    with pytest.raises(TypeError, match="noise_scale"):
        gs.watch(_model(), noise_scale=0)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_ddp_gives_the_sums_of_accumulation_on_the_same_micro_batches(tmp_path):
    from tests.instrument.test_distributed import WORLD, _spawn

    _spawn(noise_workers.worker, tmp_path)
    for per_rank in (1, 2):
        noise_workers.reference(tmp_path / f"acc{per_rank}", WORLD * per_rank)
        ddp, acc = gs.open_run(tmp_path / f"ddp{per_rank}"), gs.open_run(tmp_path / f"acc{per_rank}")
        for level in ("layer", "model"):
            for stat in ("gns_grad_sq", "gns_trace", "gns", "gns_batch"):
                if level == "layer" and stat == "gns_batch":
                    continue
                got, want = ddp.series(stat, level), acc.series(stat, level)
                assert got.shape == want.shape == (noise_workers.STEPS, 3 if level == "layer" else 1)
                np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-5, atol=1e-9,
                                           err_msg=f"{per_rank} micro-batch(es) per rank: {level} {stat}")
        assert not math.isnan(ddp.series("gns", "model").iloc[-1, 0])


def test_torch_autograd_grad_is_not_a_micro_batch(tmp_path):
    """Regression: a gradient taken with torch.autograd.grad (a gradient penalty, a reference in
    a Lightning hook) ran the parameters' hooks and counted as a micro-batch."""
    model = _model()
    with gs.watch(model, tmp_path / "run", noise_scale=True, backend="eager") as monitor:
        for _ in range(2):
            out = model(torch.randn(4, 6, dtype=torch.float64)).sum()
            torch.autograd.grad(out, list(model.parameters()), retain_graph=True)
            out.backward()
        monitor.step()
    batch = gs.open_run(tmp_path / "run").series("gns_batch", "model").iloc[:, 0]
    assert list(batch) == [2.0]


def test_a_parameter_unfrozen_after_watch_is_left_out(tmp_path):
    """Its micro-batches are not seen (no hook): the layers of the others keep their values, its
    own layer has none."""
    model = _model()
    model[2].requires_grad_(False)
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    with gs.watch(model, tmp_path / "run", noise_scale=True, backend="eager") as monitor:
        model[2].requires_grad_(True)
        for xb in x:
            model(xb).sum().backward()
        monitor.step()
    run = gs.open_run(tmp_path / "run")
    assert list(run.series("gns_grad_sq", "layer").columns) == ["0"]
    g = [torch.autograd.grad(model(xb).sum(), list(model[0].parameters())) for xb in x]
    small = sum(sum(float(t.square().sum()) for t in gi) for gi in g) / 2 * 4  # (k h_j)², k = 2
    big = sum(float((a + b).square().sum()) for a, b in zip(*g))
    want = (2 * big - small) / (2 - 1)
    assert run.series("gns_grad_sq", "layer")["0"].iloc[0] == pytest.approx(want, rel=1e-6)
    assert run.series("gns_grad_sq", "model").iloc[0, 0] == pytest.approx(want, rel=1e-6)


class _TwoDtypes(nn.Module):
    """A float32 and a float64 layer (two norm buffers); ``side`` is used by the odd micro-batches only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, 1).double()
        self.side = nn.Linear(6, 1).double()

    def forward(self, x: torch.Tensor, use_side: bool) -> torch.Tensor:
        out = self.b(torch.tanh(self.a(x.float())).double())
        return out + self.side(x) if use_side else out


def test_per_step_sums_under_accumulation_equal_autograd_micro_batch_gradients(tmp_path):
    """Each step's gns_grad_sq and gns_trace, per layer and for the model, from the micro-batch
    gradients taken one by one with torch.autograd.grad (float64): more micro-batches than the
    hooks' buffers hold at first (they grow), a float32 and a float64 layer, and a layer that
    some micro-batches leave out (a zero gradient there), over steps that reuse the buffers."""
    from gradsight.instrument.noise_scale import INITIAL_CALLS

    model = _TwoDtypes()
    g = torch.Generator().manual_seed(5)
    steps = [torch.randn(k, 3, 6, generator=g, dtype=torch.float64) for k in (3, INITIAL_CALLS + 3, 2)]
    layers = {"a": [model.a.weight, model.a.bias], "b": [model.b.weight, model.b.bias],
              "side": [model.side.weight, model.side.bias]}
    want = []
    for batches in steps:
        k = len(batches)
        per_micro = []  # [micro-batch][layer] -> flat float64 gradient
        for j, xb in enumerate(batches):
            loss = model(xb, j % 2 == 1).sum()
            grads = torch.autograd.grad(loss, [p for ps in layers.values() for p in ps], allow_unused=True)
            grads = [torch.zeros_like(p) if gr is None else gr for gr, p in zip(grads, (p for ps in layers.values()
                                                                                         for p in ps))]
            flat, at = {}, 0
            for name, ps in layers.items():
                flat[name] = torch.cat([t.double().reshape(-1) for t in grads[at:at + len(ps)]])
                at += len(ps)
            per_micro.append(flat)
        step = {}
        for name in [*layers, ""]:
            names = list(layers) if name == "" else [name]
            small = sum(float((k * mb[n]).square().sum()) for mb in per_micro for n in names) / k
            big = sum(float(sum(mb[n] for mb in per_micro).square().sum()) for n in names)
            scale = (k * big + small) / (k - 1)  # cancellation: 'side' in one micro-batch of k has |G|² = 0
            step[name] = ((k * big - small) / (k - 1), k * (small - big) / (k - 1), scale)
        want.append(step)
    with gs.watch(model, tmp_path / "run", noise_scale=True, backend="eager") as monitor:
        for batches in steps:
            for j, xb in enumerate(batches):
                model(xb, j % 2 == 1).sum().backward()
            monitor.step()
            model.zero_grad()
    run = gs.open_run(tmp_path / "run")
    k_of = [len(b) for b in steps]
    for stat, col in (("gns_grad_sq", 0), ("gns_trace", 1)):
        layer, whole = run.series(stat, "layer"), run.series(stat, "model")
        for s, step in enumerate(want):
            for name in layers:
                got, (value, scale) = layer[name].iloc[s], (step[name][col], step[name][2] * (1 if col == 0 else k_of[s]))
                assert got == pytest.approx(value, rel=1e-5, abs=1e-6 * scale), (stat, s, name)
            assert whole.iloc[s, 0] == pytest.approx(step[""][col], rel=1e-5), (stat, s)
    assert list(run.series("gns_batch", "model").iloc[:, 0]) == [3.0, INITIAL_CALLS + 3.0, 2.0]
