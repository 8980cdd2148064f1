"""A disabled GradScaler (``GradScaler(enabled=False)``, as nanoGPT passes on fp32/bf16
runs and on CPU) is no scaler: no amp, no loss scale, the same statistics."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

import gradsight as gs
from tests.instrument.reference import assert_matches, reference


def _train(run_dir, scaler=None, steps=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    refs = []
    with gs.watch(model, run_dir, optimizer=opt, scaler=scaler) as mon:
        for _ in range(steps):
            loss = model(torch.randn(8, 10)).pow(2).mean()
            (scaler.scale(loss) if scaler is not None else loss).backward()
            mon.step(loss)
            refs.append(reference(model))
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad()
    return refs


def test_disabled_scaler_is_no_scaler(tmp_path):
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    refs = _train(tmp_path / "off", scaler)
    _train(tmp_path / "none")
    off, none = gs.open_run(tmp_path / "off"), gs.open_run(tmp_path / "none")
    assert off.meta["amp"] is False
    frame = off.frame()
    assert not {"loss_scale", "skipped"} & set(frame.stat)
    for step, ref in enumerate(refs):  # against float64 from .grad, unscaled (scale 1)
        assert_matches(frame, ref, step=step, rtol=1e-5)
    cols = ["step", "level", "name", "stat", "value"]
    pd.testing.assert_frame_equal(frame[cols].sort_values(cols[:4]).reset_index(drop=True),
                                  none.frame()[cols].sort_values(cols[:4]).reset_index(drop=True))
