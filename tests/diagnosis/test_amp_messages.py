"""``amp_underflow`` with a disabled GradScaler, and with no loss scale recorded:
no fp16 advice on an fp32 run, and never "nan" in a message."""

from __future__ import annotations

import math

import torch
from torch import nn

import gradsight as gs
from gradsight.diagnosis.rules import _fmt


def _record(run_dir, scaler, loss_factor=1e-9, steps=4):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    with gs.watch(model, run_dir, histograms=True, scaler=scaler) as mon:
        for _ in range(steps):
            model.zero_grad()
            (model(torch.randn(16, 32)).pow(2).mean() * loss_factor).backward()  # not scaler.scale(): no scale
            mon.step()
    return run_dir


def test_fp32_run_with_disabled_scaler_has_no_amp_underflow(tmp_path):
    # gradients that would underflow fp16; but the run trains in fp32 (nanoGPT: GradScaler(enabled=False))
    run_dir = _record(tmp_path / "run", torch.amp.GradScaler("cpu", enabled=False))
    assert gs.open_run(run_dir).series("fp16_underflow", level="model").iloc[:, 0].min() > 0.5
    assert "amp_underflow" not in [f.code for f in gs.diagnose(run_dir)]


def test_amp_underflow_without_loss_scale_says_so_without_nan(tmp_path):
    # an enabled scaler whose scale() was never called: amp recorded, no loss scale
    run_dir = _record(tmp_path / "run", torch.amp.GradScaler("cpu"))
    run = gs.open_run(run_dir)
    assert run.meta["amp"] is True and "loss_scale" not in run.stats(level="model")
    findings = [f for f in gs.diagnose(run_dir) if f.code == "amp_underflow"]
    assert len(findings) == 1
    message = findings[0].message
    assert "nan" not in message.lower() and "no loss scale was recorded" in message
    assert all(math.isfinite(v) for v in findings[0].measured.values())


def test_fmt_says_a_missing_value_in_words():
    assert _fmt(math.nan) == "an unknown value"
    assert _fmt(math.inf) == "inf" and _fmt(0.000123456) == "0.000123"
