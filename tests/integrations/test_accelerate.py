"""A Hugging Face Accelerate loop with gradient accumulation (``accelerator.accumulate``, whose
optimizer wrapper skips ``step()`` and ``zero_grad()`` on the micro-batches that do not sync):
the steps are judged cleared, and a forgotten ``zero_grad()`` is told."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gradsight as gs

accelerate = pytest.importorskip("accelerate")


@pytest.mark.parametrize("zero", [True, False])
def test_accumulate_is_judged_cleared_and_a_forgotten_zero_grad_is_told(tmp_path, zero):
    torch.manual_seed(0)
    accelerator = accelerate.Accelerator(gradient_accumulation_steps=2, cpu=True)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 4))
    model, opt = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gs.watch(model, tmp_path / "run", optimizer=opt.optimizer) as mon:
            for _ in range(8):  # 4 optimizer steps of 2 micro-batches
                with accelerator.accumulate(model):
                    x, y = torch.randn(16, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
                    accelerator.backward(nn.functional.cross_entropy(model(x), y))
                    if accelerator.sync_gradients:
                        mon.step()
                    opt.step()
                    if zero:
                        opt.zero_grad()
    with gs.open_run(tmp_path / "run") as run:
        assert run.series("grad_not_zeroed", level="model").iloc[:, 0].to_dict() == {s: float(not zero)
                                                                                   for s in (1, 2, 3)}
        assert set(run.series("eval_mode", level="model").iloc[:, 0]) == {0.0}
    codes = {f.code for f in gs.diagnose(tmp_path / "run")}
    assert ("gradients_not_zeroed" in codes) is (not zero)
