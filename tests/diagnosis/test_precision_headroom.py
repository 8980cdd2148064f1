"""The ``amp_underflow`` rule: gradients lost to the training format's range."""

from __future__ import annotations

import torch
from torch import nn

import gradsight as gs
from gradsight.diagnosis.rules import training_format


def _record(tmp_path, model, dtype, loss_factor, steps=4, **watch):
    torch.manual_seed(0)
    with gs.watch(model, tmp_path / "run", histograms=True, **watch) as mon:
        for _ in range(steps):
            model.zero_grad()
            (model(torch.randn(16, 32, dtype=dtype)).float().pow(2).mean() * loss_factor).backward()
            mon.step()
    return tmp_path / "run"


def _codes(run_dir):
    return [f.code for f in gs.diagnose(run_dir)]


def test_fp32_model_with_tiny_gradients_is_not_flagged(tmp_path):
    # its gradients would underflow fp16, but it trains in fp32: nothing is lost
    model = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    run_dir = _record(tmp_path, model, torch.float32, 1e-9)
    run = gs.open_run(run_dir)
    assert run.series("fp16_underflow", level="model").iloc[:, 0].min() > 0.5
    assert training_format(run) is None
    assert "amp_underflow" not in _codes(run_dir)


def test_fp16_model_with_tiny_gradients_is_told_to_scale_the_loss(tmp_path):
    model = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)).half()
    run_dir = _record(tmp_path, model, torch.float16, 1e-4)
    findings = [f for f in gs.diagnose(run_dir) if f.code == "amp_underflow"]
    assert len(findings) == 1 and findings[0].severity == "warning"
    assert "GradScaler" in findings[0].message and findings[0].measured["subnormal_share"] > 0.01


def test_fp16_model_with_gradients_in_range_is_not_flagged(tmp_path):
    model = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)).half()
    run_dir = _record(tmp_path, model, torch.float16, 1.0)
    assert "amp_underflow" not in _codes(run_dir)


def test_bf16_weights_that_lose_gradients_are_told_to_keep_fp32(tmp_path):
    model = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)).bfloat16()
    run_dir = _record(tmp_path, model, torch.bfloat16, 1e-36)
    findings = [f for f in gs.diagnose(run_dir) if f.code == "amp_underflow"]
    assert findings and "fp32" in findings[0].message
