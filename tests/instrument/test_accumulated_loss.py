"""Gradient accumulation and the loss: the README quickstart's snippet passes the loss of
the step (the sum of the backpropagated micro-batch losses), recorded exactly as passed."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
from torch import nn

import gradsight as gs

README = Path(__file__).resolve().parents[2] / "README.md"


def _accumulation_snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    found = [b for b in blocks if "monitor.step(total)" in b]
    assert len(found) == 1, "the README quickstart shows one gradient-accumulation loop passing the step's loss"
    return found[0]


def test_readme_accumulation_snippet_records_the_loss_of_the_step(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(8, 6), torch.randn(8, 2)) for _ in range(3)]
    before = []  # the model as each step's micro-batches see it
    passed = []  # what the snippet hands to monitor.step

    class Loader:
        def __iter__(self):
            for batch in batches:
                before.append(copy.deepcopy(model).double())
                yield batch

    with gs.watch(model, tmp_path / "run", optimizer=optimizer) as monitor:
        real_step = monitor.step
        monitor.step = lambda loss=None, **kw: (passed.append(loss), real_step(loss, **kw))[1]
        exec(_accumulation_snippet(), {"loader": Loader(), "accum": 2, "loss_fn": nn.functional.mse_loss,
                                       "model": model, "monitor": monitor, "optimizer": optimizer})
    recorded = gs.open_run(tmp_path / "run").metrics()["loss"]
    assert list(recorded.index) == [0, 1, 2]
    for step, ((x, y), ref_model) in enumerate(zip(batches, before)):
        ref_model.requires_grad_(False)
        assert recorded[step] == float(passed[step])  # exactly as passed
        # the step's loss in float64: the mean over the whole batch, both micro-batches
        reference = float(nn.functional.mse_loss(ref_model(x.double()), y.double()))
        assert abs(recorded[step] - reference) <= 1e-6 * reference
        last_micro = float(nn.functional.mse_loss(ref_model(x[4:].double()), y[4:].double())) / 2
        assert abs(recorded[step] - last_micro) > 1e-3 * reference  # not the last micro-batch's share
