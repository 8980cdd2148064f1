"""Gradients whose float32 squares underflow or overflow while the elements do not.

A gradient of 1e-30 per element is a finite, nonzero float32 number whose square (1e-60)
is below float32's smallest (1.4e-45): summed in float32 squares, its norm was recorded as
exactly 0, and the doctor reported "exactly zero gradient" where the gradient was 1e-30
(HF EfficientNet at width 0.25: 1e-34 at its stem). An element of 1e21 squares to Inf. The
monitor squares such tensors again in float64; every statistic is checked against the
float64 reference, with no absolute tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.stats.grad import squares_lost
from tests.instrument.reference import assert_matches, reference


@pytest.mark.parametrize("backend", ["eager", "fused"])
@pytest.mark.parametrize("loss_scale", [1e-30, 1e21])
def test_norms_of_gradients_whose_squares_leave_float32_match_float64(tmp_path, backend, loss_scale):
    torch.manual_seed(0)
    # the first layer has 131,072 elements: the fused kernel's size (FUSED_MIN_NUMEL)
    model = nn.Sequential(nn.Linear(512, 256), nn.Tanh(), nn.Linear(256, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(16, 512)
    with gs.watch(model, tmp_path / "run", backend=backend) as mon:
        (model(x).pow(2).mean() * loss_scale).backward()
        grads = [p.grad for p in model.parameters()]
        assert all(torch.isfinite(g).all() and g.abs().max() > 0 for g in grads)
        squares = [float(g.float().pow(2).sum()) for g in grads]
        assert all(s == 0 for s in squares) if loss_scale < 1 else any(math.isinf(s) for s in squares)
        mon.step()
        ref = reference(model)
    frame = gs.open_run(tmp_path / "run").frame()
    assert_matches(frame, ref, atol=0.0)
    norms = frame[(frame.stat == "grad_norm")].value
    assert (norms > 0).all() and np.isfinite(norms).all()
    assert (frame[frame.stat == "grad_nonfinite"].value == 0).all()


def test_squares_lost_flags_underflow_and_overflow_not_nan_or_zero_gradients():
    sumsq = np.array([0.0, 0.0, np.inf, np.inf, np.nan, 4.0])
    maxabs = np.array([0.0, 1e-30, 1e21, np.inf, np.nan, 2.0])
    assert squares_lost(sumsq, maxabs).tolist() == [1, 2]
