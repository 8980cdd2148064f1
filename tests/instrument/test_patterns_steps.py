"""``monitor.step()`` calls that have no gradient of their own: a step where no watched
parameter has a gradient records no gradient statistics (never made-up zeros) and says why
once; a second ``step()`` for the same backward pass is said once."""

from __future__ import annotations

import math
import time
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad

import gradsight as gs
from tests.instrument.reference import reference

NO_GRADIENT = ("gradsight: monitor.step() found no gradient on any parameter that requires one (every .grad is "
               "None: an evaluation step under torch.no_grad(), zero_grad() before step(), or gradients taken with "
               "torch.func or torch.autograd.grad without assigning .grad); no gradient statistics are recorded "
               "for such a step")
SAME_GRADIENT = ("gradsight: monitor.step() was called again without a backward pass in between: the "
                 "gradients are the same tensors, unchanged since the previous step() call, and each call "
                 "records them as a step of its own; call monitor.step() once per optimizer step")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def _eval_under_no_grad(model, mon):
    with torch.no_grad():
        loss = model(torch.randn(3, 4)).pow(2).mean()
    mon.step(loss)
    return loss


def _zero_grad_first(model, mon):
    loss = model(torch.randn(3, 4)).pow(2).mean()
    loss.backward()
    model.zero_grad(set_to_none=True)
    mon.step(loss)
    return loss


def _func_grad(model, mon):
    params = {n: p.detach() for n, p in model.named_parameters()}
    x = torch.randn(3, 4)
    grads = grad(lambda p: functional_call(model, p, (x,)).pow(2).mean())(params)
    assert set(grads) == set(params)  # the gradients exist, but not in .grad
    loss = functional_call(model, params, (x,)).pow(2).mean()
    mon.step(loss)
    return loss


@pytest.mark.parametrize("no_gradient_step", [_eval_under_no_grad, _zero_grad_first, _func_grad],
                         ids=["eval-no-grad", "zero-grad-before-step", "torch-func-grad"])
def test_step_without_any_gradient_records_no_statistics_and_warns_once(tmp_path, no_gradient_step):
    model = _model()
    with gs.watch(model, tmp_path / "run") as mon:
        model(torch.randn(3, 4)).pow(2).mean().backward()
        mon.step()
        ref = reference(model)
        model.zero_grad(set_to_none=True)
        with pytest.warns(UserWarning) as caught:
            loss = no_gradient_step(model, mon)
            no_gradient_step(model, mon)
        assert [str(w.message) for w in caught] == [NO_GRADIENT]
        assert caught[0].filename == __file__  # points at the caller's step()
        model(torch.randn(3, 4)).pow(2).mean().backward()
        mon.step()
    run = gs.open_run(tmp_path / "run")
    frame = run.frame()
    assert sorted(set(frame[frame.level != "metric"].step)) == [0, 3]  # nothing at steps 1 and 2
    assert list(run.steps()) == [0, 3]
    loss_rows = frame[frame.level == "metric"]
    assert loss_rows[loss_rows.step == 1].value.item() == pytest.approx(float(loss.detach()))  # the loss passed is kept
    model_row = frame[(frame.level == "model") & (frame.step == 0)].set_index("stat").value
    assert math.isclose(model_row["grad_norm"], ref[("model", "")]["grad_norm"], rel_tol=1e-6)
    assert run.meta["steps_recorded"] == 2 and run.meta["step_calls"] == 4


def test_parameters_individually_missing_still_marked(tmp_path):
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with gs.watch(model, tmp_path / "run") as mon:
            model(torch.randn(3, 4)).pow(2).mean().backward()
            model[0].bias.grad = None
            mon.step()
    frame = gs.open_run(tmp_path / "run").frame()
    missing = frame[frame.stat == "grad_missing"].set_index(["level", "name"]).value
    assert missing.to_dict() == {("param", "0.bias"): 1.0, ("model", ""): 1.0}


def test_second_step_for_one_backward_warns_once(tmp_path):
    model = _model()
    with gs.watch(model, tmp_path / "run") as mon:
        model(torch.randn(3, 4)).pow(2).mean().backward()
        mon.step()
        with pytest.warns(UserWarning) as caught:
            mon.step()  # the same backward's gradients again
            model(torch.randn(3, 4)).pow(2).mean().backward()
            mon.step()
            mon.step()
        assert [str(w.message) for w in caught] == [SAME_GRADIENT]
        assert caught[0].filename == __file__


def test_second_step_is_found_between_unrecorded_calls_too(tmp_path):
    model = _model()
    with gs.watch(model, tmp_path / "run", every=3) as mon:
        model(torch.randn(3, 4)).pow(2).mean().backward()
        mon.step()
        with pytest.warns(UserWarning, match="called again without a backward pass"):
            mon.step()


@pytest.mark.parametrize("set_to_none", [True, False])
def test_ordinary_loops_do_not_warn(tmp_path, set_to_none):
    """One step per backward, accumulation, clipping, and an unused parameter among those checked."""
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2), nn.Linear(2, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=True) as mon:
            for step in range(6):
                for _ in range(2):  # accumulation
                    out = model[:3](torch.randn(3, 4)) if step % 2 else model(torch.randn(3, 4))
                    out.pow(2).mean().backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                mon.step()
                opt.step()
                opt.zero_grad(set_to_none=set_to_none)


def test_the_check_costs_microseconds_per_call(tmp_path):
    model = _model()
    with gs.watch(model, tmp_path / "run", every=10**9) as mon:  # only the first call records
        model(torch.randn(3, 4)).pow(2).mean().backward()
        mon.step()
        start = time.perf_counter()
        for _ in range(2000):
            model[0].weight.grad.add_(0.0)  # a new backward's accumulation, as far as the check can tell
            mon.step()
        per_call = (time.perf_counter() - start) / 2000
    assert per_call < 50e-6, per_call


def test_model_with_nothing_trainable_records_no_made_up_rows(tmp_path):
    model = _model().requires_grad_(False)
    with pytest.warns(UserWarning) as caught:
        with gs.watch(model, tmp_path / "run") as mon:
            model(torch.randn(3, 4)).sum()
            assert mon.step() is False
    assert ["no trainable parameters" in str(w.message) for w in caught] == [True]  # said once, at watch
    run = gs.open_run(tmp_path / "run")
    assert run.frame().empty and list(run.steps()) == []
