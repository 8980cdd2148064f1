"""Adam's state per layer (``adam_*``) against a float64 recomputation from the optimizer's state dict."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.instrument.optimizer_state import ADAM_STATS

STEPS = 3


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 2))


def _reference(state_dict: dict, names: list[str]) -> dict[tuple[str, str], dict[str, float]]:
    """``{(level, name): {stat: value}}`` of every parameter, layer and the model, in float64."""
    per_param = {}
    for group in state_dict["param_groups"]:
        beta1, beta2 = group["betas"]
        for index in group["params"]:
            st = state_dict["state"][index]
            t = float(st["step"])
            m = st["exp_avg"].double() / (1 - beta1 ** t)
            v = (st["max_exp_avg_sq"] if group["amsgrad"] else st["exp_avg_sq"]).double() / (1 - beta2 ** t)
            u = m / (v.sqrt() + group["eps"])
            small = (v > 0) & (v.sqrt() < group["eps"])
            per_param[names[index]] = (v.reshape(-1), small.reshape(-1).double(), u.reshape(-1),
                                       (group["lr"] * u).reshape(-1), (v > 0).reshape(-1).double())
    out = {}
    groups = {("param", n): [n] for n in per_param}
    for n in per_param:
        groups.setdefault(("layer", n.rsplit(".", 1)[0]), []).append(n)
    groups[("model", "")] = list(per_param)
    for key, members in groups.items():
        v, small, u, step, active = (torch.cat([per_param[n][k] for n in members]) for k in range(5))
        out[key] = {"adam_sqrt_v_rms": math.sqrt(float(v.mean())), "adam_eps_frac": float(small.sum() / active.sum()),
                    "adam_update_rms": math.sqrt(float(u.square().mean())),
                    "adam_step_rms": math.sqrt(float(step.square().mean()))}
    return out


VARIANTS = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam-foreach": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=True),
    "adam-fused": lambda p: torch.optim.Adam(p, lr=1e-2, fused=True),
    "adamw-amsgrad": lambda p: torch.optim.AdamW(p, lr=3e-3, amsgrad=True, weight_decay=0.1),
    "adamw-eps": lambda p: torch.optim.AdamW(p, lr=1e-3, eps=1e-2, foreach=False),  # eps dominates some
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_adam_state_matches_a_float64_recomputation(tmp_path, variant):
    model = _model()
    optimizer = VARIANTS[variant](model.parameters())
    names = [n for n, _ in model.named_parameters()]
    states = []
    with gs.watch(model, tmp_path / "run", optimizer=optimizer, update_ratio=True, backend="eager") as monitor:
        for _ in range(STEPS):
            model(torch.randn(16, 6)).pow(2).mean().backward()
            monitor.step()
            optimizer.step()
            optimizer.zero_grad()
            states.append(copy.deepcopy(optimizer.state_dict()))
    frame = gs.open_run(tmp_path / "run").frame()
    got = {(r.step, r.level, r.name, r.stat): r.value for r in frame[frame.stat.str.startswith("adam_")].itertuples()}
    assert len(got) == STEPS * (len(names) + 3 + 1) * len(ADAM_STATS)
    for step, state in enumerate(states):
        for (level, name), stats in _reference(state, names).items():
            for stat, want in stats.items():
                assert got[(step, level, name, stat)] == pytest.approx(want, rel=1e-5, abs=1e-12), \
                    (step, level, name, stat)
    if variant == "adamw-eps":
        assert 0 < got[(STEPS - 1, "model", "", "adam_eps_frac")] < 1


def test_only_the_steps_that_measure_update_ratio_read_the_state(tmp_path):
    model = _model()
    optimizer = torch.optim.Adam(model.parameters())
    with gs.watch(model, tmp_path / "run", optimizer=optimizer, update_ratio=2, backend="eager") as monitor:
        for _ in range(5):
            model(torch.randn(4, 6)).sum().backward()
            monitor.step()
            optimizer.step()
            optimizer.zero_grad()
    run = gs.open_run(tmp_path / "run")
    assert list(run.series("adam_update_rms", "model").index) == list(run.series("update_ratio", "model").index) \
        == [0, 2, 4]


def test_sgd_has_no_adam_state(tmp_path, tiny_run):
    assert not [s for s in gs.open_run(tiny_run).stats("model") if s.startswith("adam_")]


def test_rows_that_never_had_a_gradient_are_not_counted_as_eps_dominated(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)  # eps 1e-8: no element with a gradient below it
    names = [n for n, _ in model.named_parameters()]
    with gs.watch(model, tmp_path / "run", optimizer=optimizer, update_ratio=True, backend="eager") as monitor:
        for _ in range(STEPS):
            tokens = torch.randint(0, 5, (8, 3))  # rows 5-9 of the table never get a gradient
            model(tokens).pow(2).mean().backward()
            monitor.step()
            optimizer.step()
            optimizer.zero_grad()
    run = gs.open_run(tmp_path / "run")
    want = _reference(optimizer.state_dict(), names)[("layer", "0")]["adam_eps_frac"]
    got = run.series("adam_eps_frac", "layer")["0"].iloc[-1]
    assert got == pytest.approx(want, abs=1e-12)
    assert got == 0
    v = optimizer.state[model[0].weight]["exp_avg_sq"]
    assert (v[5:] == 0).all()  # left out: counted, the share would be 1/2


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_fsdp2_sharded_state_gives_the_single_process_statistics(tmp_path):
    from tests.instrument import adam_workers
    from tests.instrument.test_distributed import _spawn

    _spawn(adam_workers.worker, tmp_path)
    adam_workers.reference(tmp_path / "reference")
    frames = [gs.open_run(tmp_path / d).frame() for d in ("fsdp", "reference")]
    got, want = ({(r.step, r.level, r.name, r.stat): r.value for r in f[f.stat.str.startswith("adam_")].itertuples()}
                 for f in frames)
    assert set(got) == set(want) and len(want) == adam_workers.STEPS * (6 + 3 + 1) * len(ADAM_STATS)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_the_c_kernel_gives_the_adam_sums_of_a_float64_computation(dtype, threads, monkeypatch):
    """``adam_sums_of`` (the C kernel, one call for all the states, split across threads inside
    tensors) against a float64 computation from the same state, on states of several parts,
    a length no vector width divides, elements that never had a gradient (v = 0) and some where
    eps dominates; and the states it does not take (one transposed) through ``adam_sums``."""
    from gradsight.instrument.optimizer_state import adam_sums, adam_sums_of
    from gradsight.stats import native

    assert native.library() is not None, native.error()
    monkeypatch.setattr(native, "THREAD_MIN_NUMEL", 1)
    gen = torch.Generator().manual_seed(3)
    shapes = [(300, 70), (9001,), (5, 3), (64, 32, 3, 3)]
    items, wanted = [], []
    for k, shape in enumerate(shapes):
        m = torch.randn(shape, generator=gen) * 1e-3
        v = torch.rand(shape, generator=gen) * 1e-6
        v.view(-1)[::7] = 0  # never had a gradient
        v.view(-1)[1::11] = 1e-20  # sqrt(v_hat) below eps
        m, v = m.to(dtype), v.to(dtype)
        if k == 3:
            m, v = m.to(memory_format=torch.channels_last), v.to(memory_format=torch.channels_last)
        group = {"betas": (0.9, 0.999), "eps": 1e-8, "lr": 3e-4, "amsgrad": False}
        state = {"exp_avg": m, "exp_avg_sq": v, "step": torch.tensor(float(k + 2))}
        items.append((state, group))
        t = float(k + 2)
        bc1, bc2 = 1 - 0.9 ** t, 1 - 0.999 ** t
        v_hat = v.double() / bc2
        u = (m.double() / bc1) / (v_hat.sqrt() + 1e-8)
        wanted.append([float(v_hat.sum()), float(((v_hat > 0) & (v_hat.sqrt() < 1e-8)).sum()), float(u.square().sum()),
                       float(u.square().sum()) * 3e-4 ** 2, float(v.numel()), float((v > 0).sum())])
    transposed = ({"exp_avg": items[0][0]["exp_avg"].t(), "exp_avg_sq": items[0][0]["exp_avg_sq"].t(),
                   "step": torch.tensor(2.0)}, items[0][1])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = adam_sums_of([*items, transposed, ({}, items[0][1])])
    finally:
        torch.set_num_threads(before)
    assert got[-1] is None  # no state yet
    rtol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-3  # (float32 rounding of 16-bit states' u)
    for row, want in zip(got, [*wanted, wanted[0]]):
        np.testing.assert_allclose(row.numpy(), want, rtol=rtol, atol=0)
    torch.testing.assert_close(got[0], adam_sums(*items[0]), rtol=1e-5, atol=0)
    assert wanted[0][5] < wanted[0][4]  # some never had a gradient
    assert (wanted[0][1] > 0) == (dtype != torch.float16)  # eps dominates some (float16 has no 1e-20)
