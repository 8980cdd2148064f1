"""Gradients not cleared between optimizer steps (a forgotten ``zero_grad()``).

The loop decides which steps begin from a cleared gradient; ``grad_not_zeroed`` must be
exactly that, at every recorded step that an optimizer step came before, and absent (not 0)
where no step can be judged. The gradient recorded under a forgotten ``zero_grad()`` is
checked against an independent float64 sum of each step's own gradient.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradsight as gs
from gradsight.instrument.zeroing import STAT
from tests.devices import DEVICES


def _model(device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to(device)


def _batch(t: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(t)
    return torch.randn(32, 8, generator=g).to(device), torch.randint(0, 4, (32,), generator=g).to(device)


def _verdicts(run_dir) -> dict[int, float]:
    with gs.open_run(run_dir) as run:
        if STAT not in run.stats("model"):
            return {}
        series = run.series(STAT, level="model").iloc[:, 0]
        return {int(k): float(v) for k, v in series.items()}


def _codes(run_dir) -> set[str]:
    return {f.code for f in gs.diagnose(run_dir)}


def _train(tmp_path, loop: str, steps: int = 6, optimizer=torch.optim.SGD, device: str = "cpu", **watch) -> tuple:
    """Train with one of the loops below; returns (run_dir, the zeroing warnings)."""
    model = _model(device)
    opt = optimizer(model.parameters(), lr=0.05)
    run_dir = tmp_path / loop
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gs.watch(model, run_dir, optimizer=opt, **watch) as mon:
            for t in range(steps):
                if loop in ("zero_before_backward", "gradient_penalty"):
                    opt.zero_grad()
                if loop in ("accumulate", "step_per_micro_batch"):
                    for k in range(4):
                        x, y = _batch(10 * t + k, device)
                        (F.cross_entropy(model(x), y) / 4).backward()
                        if loop == "step_per_micro_batch":
                            mon.step()
                elif loop == "gradient_penalty":  # torch.autograd.grad's passes do not accumulate into .grad
                    x, y = _batch(t, device)
                    x.requires_grad_(True)
                    loss = F.cross_entropy(model(x), y)
                    (dx,) = torch.autograd.grad(loss, x, create_graph=True)
                    (loss + dx.pow(2).sum()).backward()
                else:
                    x, y = _batch(t, device)
                    F.cross_entropy(model(x), y).backward()
                if loop != "step_per_micro_batch":
                    mon.step()
                if loop == "gradient_penalty":  # a reference taken after step(), as a callback may
                    torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
                if loop == "clip_after_step":  # in place, after the monitor saw the gradient
                    nn.utils.clip_grad_norm_(model.parameters(), 0.01)
                opt.step()
                if loop in ("set_to_none", "accumulate", "step_per_micro_batch"):
                    opt.zero_grad()
                elif loop == "set_to_zero":
                    opt.zero_grad(set_to_none=False)
                elif loop == "model_zero_grad":
                    model.zero_grad()
                elif loop == "every_other_step" and t % 2 == 1:
                    opt.zero_grad()
    return run_dir, [w for w in caught if "not zeroed" in str(w.message)]


@pytest.mark.parametrize("loop", ["set_to_none", "zero_before_backward", "set_to_zero", "model_zero_grad",
                                  "accumulate", "step_per_micro_batch", "gradient_penalty"])
def test_cleared_gradients_are_judged_cleared(tmp_path, loop):
    run_dir, said = _train(tmp_path, loop)
    verdicts = _verdicts(run_dir)
    # every step after the first follows an optimizer step; calling step() for each micro-batch, the
    # first micro-batch's (which follows one) is judged, the others (no optimizer step before) are not
    expected = list(range(4, 24, 4)) if loop == "step_per_micro_batch" else list(range(1, 6))
    assert verdicts == {s: 0.0 for s in expected}
    assert said == [] and "gradients_not_zeroed" not in _codes(run_dir)


def _fused_adamw(params, lr):  # steps without bumping the parameters' version counters
    return torch.optim.AdamW(params, lr=lr, fused=True)


@pytest.mark.parametrize("optimizer", [torch.optim.SGD, torch.optim.Adam, _fused_adamw])
@pytest.mark.parametrize("loop", ["forgotten", "clip_after_step"])
def test_a_forgotten_zero_grad_is_recorded_at_every_step_said_once_and_diagnosed(tmp_path, loop, optimizer):
    run_dir, said = _train(tmp_path, loop, optimizer=optimizer)
    assert _verdicts(run_dir) == {s: 1.0 for s in range(1, 6)}
    assert len(said) == 1 and "at step 1 " in str(said[0].message) and said[0].filename == __file__
    finding = next(f for f in gs.diagnose(run_dir) if f.code == "gradients_not_zeroed")
    assert finding.severity == "error" and finding.steps == [1, 2, 3, 4, 5]
    assert finding.measured == {"not_zeroed_steps": 5.0, "judged_steps": 5.0}
    assert "zero_grad()" in finding.message


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("loop", ["set_to_zero", "forgotten"])
def test_the_all_zero_test_runs_on_the_gradients_device_within_the_steps_one_transfer(tmp_path, device, loop):
    """A gradient zeroed in place (the same tensor) is told from one left as it was by a test on
    its device, read with the step's statistics."""
    run_dir, said = _train(tmp_path, loop, device=device)
    assert _verdicts(run_dir) == {s: float(loop == "forgotten") for s in range(1, 6)}
    assert len(said) == (loop == "forgotten")


def test_zeroing_every_other_step_is_told_step_by_step(tmp_path):
    # zero_grad() after the optimizer steps of t = 1, 3: steps 2 and 4 begin cleared, 1, 3 and 5 do not
    run_dir, _ = _train(tmp_path, "every_other_step")
    assert _verdicts(run_dir) == {1: 1.0, 2: 0.0, 3: 1.0, 4: 0.0, 5: 1.0}
    assert next(f for f in gs.diagnose(run_dir) if f.code == "gradients_not_zeroed").steps == [1, 3, 5]


def test_the_recorded_gradient_of_a_forgotten_zero_grad_is_the_float64_sum_of_every_steps_own(tmp_path):
    """What the finding says happens: the recorded norm at step t is that of the sum of the
    gradients of steps 0..t, each taken by torch.autograd.grad in float64 at that step's weights."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    reference, total = [], None
    with pytest.warns(UserWarning, match="not zeroed"), gs.watch(model, tmp_path / "run", optimizer=opt) as mon:
        for t in range(4):
            x, y = _batch(t)
            ref = copy.deepcopy(model).double()
            own = torch.autograd.grad(F.cross_entropy(ref(x.double()), y), list(ref.parameters()))
            total = own if total is None else [a + b for a, b in zip(total, own)]
            reference.append(float(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in total]))))
            F.cross_entropy(model(x), y).backward()
            mon.step()
            opt.step()
    with gs.open_run(tmp_path / "run") as run:
        recorded = run.series("grad_norm", level="model").to_numpy().ravel()
    np.testing.assert_allclose(recorded, reference, rtol=1e-5)


def test_steps_that_cannot_be_judged_have_no_verdict_not_zero(tmp_path):
    """Weights changed through ``.data`` (no version counter) and steps the schedule leaves out."""
    model = _model()
    with gs.watch(model, tmp_path / "manual") as mon:
        for t in range(4):
            x, y = _batch(t)
            F.cross_entropy(model(x), y).backward()
            mon.step()
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-0.05)
    assert _verdicts(tmp_path / "manual") == {}
    run_dir, _ = _train(tmp_path, "forgotten", steps=7, every=2)
    assert _verdicts(run_dir) == {2: 1.0, 4: 1.0, 6: 1.0}


class _Checkpointed(nn.Module):
    def __init__(self, reentrant: bool | None) -> None:
        super().__init__()
        self.a, self.b, self.reentrant = nn.Linear(8, 16), nn.Linear(16, 4), reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = lambda t: torch.relu(self.a(t))  # noqa: E731
        if self.reentrant is None:
            return self.b(inner(x))
        return self.b(torch.utils.checkpoint.checkpoint(inner, x, use_reentrant=self.reentrant))


@pytest.mark.parametrize("how", ["compiled", "checkpoint", "reentrant_checkpoint"])
@pytest.mark.parametrize("zero", [True, False])
def test_compiled_and_checkpointed_models_are_judged_alike(tmp_path, how, zero):
    torch.manual_seed(0)
    model = _Checkpointed({"compiled": None, "checkpoint": False, "reentrant_checkpoint": True}[how])
    run = torch.compile(model) if how == "compiled" else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gs.watch(model, tmp_path / "run", optimizer=opt) as mon:
            for t in range(4):
                x, _ = _batch(t)
                run(x.requires_grad_(how == "reentrant_checkpoint")).pow(2).mean().backward()
                mon.step()
                opt.step()
                if zero:
                    opt.zero_grad()
    assert _verdicts(tmp_path / "run") == {s: float(not zero) for s in range(1, 4)}
