"""Copies of a watched model (deepcopy, AveragedModel for EMA/SWA, pickling) carry no live
gradsight hooks: they never touch the original's statistics and can be saved."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import gradsight as gs
from gradsight.instrument.hooks import InertHook, OwnHook


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.BatchNorm1d(width)

    def forward(self, x):
        return x + self.norm(torch.tanh(self.fc(x)))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), _Block(8), _Block(8), nn.Linear(8, 3))


def _hooks(model: nn.Module) -> list:
    out = []
    for mod in model.modules():
        for d in (mod._forward_hooks, mod._forward_pre_hooks, mod._backward_hooks, mod._backward_pre_hooks):
            out += list(d.values())
    return out


def _train(run_dir, *, use_copy: str | None, use_buffers: bool = False):
    """Three recorded steps with activations; ``use_copy`` runs a copy's forward and
    backward (on different inputs) between the original's backward and ``step()``."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    torch.manual_seed(1)
    xs = [torch.randn(16, 4) for _ in range(3)]
    mon = gs.watch(model, run_dir, optimizer=opt, activations=True)
    shadow = None
    if use_copy == "averaged":
        shadow = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=use_buffers)
    elif use_copy == "deepcopy":
        shadow = copy.deepcopy(model)
    for x in xs:
        loss = model(x).pow(2).mean()
        loss.backward()
        if shadow is not None:
            shadow(x * 50 + 3).pow(2).mean().backward()  # would swamp every statistic if counted
        mon.step(loss)
        opt.step()
        opt.zero_grad()
        if isinstance(shadow, AveragedModel):
            shadow.update_parameters(model)
    mon.close()
    frame = gs.open_run(run_dir).frame()
    return model, shadow, {(r.step, r.level, r.name, r.stat): r.value for r in frame.itertuples()}


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-5, nan_ok=True), key


@pytest.mark.parametrize("use_buffers", [False, True])
def test_averaged_model_of_watched_model_does_not_touch_statistics(tmp_path, use_buffers):
    _, _, plain = _train(tmp_path / "plain", use_copy=None)
    model, ema, with_ema = _train(tmp_path / "ema", use_copy="averaged", use_buffers=use_buffers)
    assert any(level == "block" for _, level, _, _ in plain)  # the residual split is recorded
    _same(plain, with_ema)
    assert _hooks(model) == []
    assert all(isinstance(h, InertHook) for h in _hooks(ema))
    torch.save(ema.module, io.BytesIO())  # (the AveragedModel itself holds torch's local EMA function)


def test_deepcopy_before_close_is_inert_and_saves(tmp_path):
    _, _, plain = _train(tmp_path / "plain", use_copy=None)
    _, copied, with_copy = _train(tmp_path / "copy", use_copy="deepcopy")
    _same(plain, with_copy)
    assert _hooks(copied) == []  # the copy has none of gradsight's hooks (a watched model copies as an unwatched one)
    buf = io.BytesIO()
    torch.save(copied, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    loaded(torch.randn(2, 4))


def test_watched_model_pickles_and_copies_have_no_live_hooks(tmp_path):
    model = _model()
    with gs.watch(model, tmp_path / "run", activations=True, optimizer=torch.optim.SGD(model.parameters(), 0.1)):
        assert any(isinstance(h, OwnHook) for h in _hooks(model))
        clone = pickle.loads(pickle.dumps(model))
        shallow = copy.copy(model)
        assert all(isinstance(h, InertHook) for h in _hooks(clone))
        clone(torch.randn(2, 4))
        shallow(torch.randn(2, 4))  # shares the hook dictionaries: the hooks see a different module
    assert _hooks(model) == []
    assert _hooks(copy.deepcopy(model)) == []  # deepcopy after close: nothing at all

