"""A model changed after ``gs.watch``: weights cast to half precision (``model.half()``,
``model.to(torch.bfloat16)``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradsight as gs


@pytest.mark.parametrize("cast", ["half", "bfloat16"])
def test_update_ratio_of_weights_cast_after_watch_within_1e_6(tmp_path, cast):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 1024), nn.Tanh(), nn.Linear(1024, 10))  # 10^4-10^5 elements
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-3)  # (Adam's default eps is 0 in float16)
    dtype = torch.float16 if cast == "half" else torch.bfloat16
    expected = {}
    with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=True) as mon:
        model.half() if cast == "half" else model.to(torch.bfloat16)
        for step in range(3):
            model(torch.randn(32, 256, dtype=dtype)).float().pow(2).mean().backward()
            mon.step()
            before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
            opt.step()
            opt.zero_grad()
            after = {n: p.detach().double() for n, p in model.named_parameters()}

            def ratio(names):
                return math.sqrt(sum(float((after[n] - before[n]).pow(2).sum()) for n in names)
                                 / sum(float(before[n].pow(2).sum()) for n in names))

            expected[step] = {("param", n): ratio([n]) for n in before}
            expected[step][("layer", "0")] = ratio(["0.weight", "0.bias"])
            expected[step][("model", "")] = ratio(list(before))
    run = gs.open_run(tmp_path / "run")
    frame = run.frame(stat="update_ratio")
    worst = 0.0
    for step, want in expected.items():
        got = frame[frame.step == step].set_index(["level", "name"]).value
        for key, value in want.items():
            assert math.isfinite(value) and value > 0, (step, key, value)
            worst = max(worst, abs(got[key] - value) / value)
    assert worst <= 1e-6, worst  # (2.7e-5 with the difference taken in bfloat16)
