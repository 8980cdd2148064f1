"""``update_ratio`` against a float64 reference on tensors of 1-2M elements, over several
recorded steps (the snapshot buffers are reused), with and without weight statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradsight as gs


def _reference(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], names: list[str]) -> float:
    """||w_after - w_before|| / ||w_before|| over ``names``, in float64."""
    dsq = sum(float((after[n].double() - before[n].double()).pow(2).sum()) for n in names)
    wsq = sum(float(before[n].double().pow(2).sum()) for n in names)
    return math.sqrt(dsq / wsq)


@pytest.mark.parametrize("weights", [True, False])
def test_update_ratio_within_1e_5_of_float64_on_million_element_tensors(tmp_path, weights):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 2048))
    # AdamW moves every element by about lr: a sum of equal-sized squares, where a float32
    # accumulation over 10^6 elements drifts most
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    expected: dict[int, dict[tuple[str, str], float]] = {}
    with gs.watch(model, tmp_path / "run", optimizer=opt, weights=weights) as mon:
        for step in range(3):
            model(torch.randn(8, 1024)).pow(2).mean().backward()
            if step == 1:
                model[0].bias.grad = None  # absent at this step: no ratio, the others still exact
            mon.step()
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            opt.step()
            opt.zero_grad()
            after = {n: p.detach().clone() for n, p in model.named_parameters()}
            present = [n for n in before if not (step == 1 and n == "0.bias")]
            want = {("param", n): _reference(before, after, [n]) for n in present}
            want[("layer", "0")] = _reference(before, after, [n for n in present if n.startswith("0.")])
            want[("layer", "2")] = _reference(before, after, ["2.weight", "2.bias"])
            want[("model", "")] = _reference(before, after, present)
            expected[step] = want
    frame = gs.open_run(tmp_path / "run").frame(stat="update_ratio")
    for step, want in expected.items():
        rows = frame[frame.step == step]
        got = {(r.level, r.name): r.value for r in rows.itertuples()}
        assert set(got) == set(want)
        for key, value in want.items():
            assert abs(got[key] - value) <= 1e-5 * value, (step, key, got[key], value)


def test_snapshot_buffers_are_reused_between_steps_and_freed_on_close(tmp_path):
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gs.watch(model, tmp_path / "run", optimizer=opt)
    pointers = []
    for _ in range(2):
        model(torch.randn(2, 4)).sum().backward()
        mon.step()
        opt.step()
        opt.zero_grad()
        pointers.append(sorted(b.data_ptr() for b in mon._updates._buffers.values()))
    assert len(pointers[0]) == 2 and pointers[0] == pointers[1]
    mon.close()
    assert mon._updates._buffers == {}
