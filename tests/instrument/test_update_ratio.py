"""``update_ratio`` against a float64 reference on tensors of 1-2M elements, over several
recorded steps (the snapshot buffers are reused), with and without weight statistics, on
every device (``tests/devices.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradsight as gs
from tests.devices import DEVICES


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
    with gs.watch(model, tmp_path / "run", optimizer=opt, weights=weights, update_ratio=True) as mon:
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_update_ratio_on_each_device_within_1e_5_of_float64(tmp_path, device, dtype):
    """The snapshot buffers, the in-place difference and the norms on the weights' device (float32
    copies of bfloat16 weights), against float64 on the same values."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 2048)).to(device, dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    names = [n for n, _ in model.named_parameters()]
    expected: dict[int, dict[tuple[str, str], float]] = {}
    with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=True) as mon:
        for step in range(3):
            model(torch.randn(8, 1024, device=device, dtype=dtype)).pow(2).mean().backward()
            mon.step()
            assert all(b.device.type == device and b.dtype == torch.float32 for b in mon._updates._buffers.values())
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            opt.step()
            opt.zero_grad()
            after = {n: p.detach().clone() for n, p in model.named_parameters()}
            want = {("param", n): _reference(before, after, [n]) for n in names}
            want.update({("layer", k): _reference(before, after, [f"{k}.weight", f"{k}.bias"]) for k in ("0", "2")})
            want[("model", "")] = _reference(before, after, names)
            expected[step] = want
    frame = gs.open_run(tmp_path / "run").frame(stat="update_ratio")
    for step, want in expected.items():
        got = {(r.level, r.name): r.value for r in frame[frame.step == step].itertuples()}
        assert set(got) == set(want)
        for key, value in want.items():
            assert value > 0 and abs(got[key] - value) <= 1e-5 * value, (step, key, got[key], value)


def test_snapshot_buffers_are_reused_between_steps_and_freed_on_close(tmp_path):
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=True)
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


def _train(model: nn.Module, opt: torch.optim.Optimizer, mon: gs.Monitor, steps: int) -> dict[int, dict[str, float]]:
    """``steps`` training steps; the float64 reference ratio of every parameter and of the
    model across each step's optimizer step."""
    names = [n for n, _ in model.named_parameters()]
    want = {}
    for step in range(steps):
        model(torch.randn(8, 6)).pow(2).mean().backward()
        mon.step()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        opt.zero_grad()
        after = {n: p.detach().clone() for n, p in model.named_parameters()}
        want[step] = {n: _reference(before, after, [n]) for n in names}
        want[step][""] = _reference(before, after, names)
    return want


@pytest.mark.parametrize("every", [1, 3])
def test_update_ratio_every_kth_recorded_step_equals_float64_reference(tmp_path, every):
    """``update_ratio=k`` with ``every=2``: recorded steps 0, 2, 4, ..., 16; the 1st, (k+1)-th,
    ... of them (the first included) have update ratios, equal to the reference there."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with gs.watch(model, tmp_path / "run", optimizer=opt, every=2, update_ratio=every) as mon:
        want = _train(model, opt, mon, 17)
    frame = gs.open_run(tmp_path / "run").frame(stat="update_ratio")
    recorded = list(range(0, 17, 2))
    measured = recorded[::every]
    assert sorted(set(frame.step)) == measured
    for step in measured:
        rows = frame[frame.step == step]
        got = {r.name: r.value for r in rows.itertuples() if r.level in ("param", "model")}
        assert set(got) == set(want[step])
        for name, value in want[step].items():
            assert abs(got[name] - value) <= 1e-5 * value, (step, name, got[name], value)
    # the other statistics are recorded at every recorded step
    grad = gs.open_run(tmp_path / "run").frame(stat="grad_norm", level="model")
    assert sorted(grad.step) == recorded


def test_update_ratio_default_is_every_tenth_recorded_step(tmp_path):
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "run", optimizer=opt) as mon:
        _train(model, opt, mon, 25)
    assert sorted(set(gs.open_run(tmp_path / "run").frame(stat="update_ratio").step)) == [0, 10, 20]


def test_update_ratio_false_records_none_and_registers_no_optimizer_hooks(tmp_path):
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=False) as mon:
        assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
        _train(model, opt, mon, 3)
        assert mon._updates._buffers == {}
    frame = gs.open_run(tmp_path / "run").frame()
    assert "update_ratio" not in set(frame.stat) and sorted(set(frame.step)) == [0, 1, 2]


def test_no_snapshot_on_recorded_steps_without_update_ratio(tmp_path, monkeypatch):
    """``update_ratio=3``: the weights are copied (and the difference taken) only at
    recorded steps 0, 3, 6; at the others the optimizer hooks return at once."""
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    copies, subtractions = [], []
    real_copy, real_sub = torch._foreach_copy_, torch._foreach_sub_
    monkeypatch.setattr(torch, "_foreach_copy_", lambda *a, **k: (copies.append(step), real_copy(*a, **k))[1])
    monkeypatch.setattr(torch, "_foreach_sub_", lambda *a, **k: (subtractions.append(step), real_sub(*a, **k))[1])
    with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=3) as mon:
        pointers = {}
        for step in range(8):
            model(torch.randn(8, 6)).pow(2).mean().backward()
            mon.step()
            before = {i: b.clone() for i, b in mon._updates._buffers.items()}
            opt.step()
            opt.zero_grad()
            if step not in (0, 3, 6):  # buffers untouched by this step
                assert before.keys() == mon._updates._buffers.keys()
                assert all(torch.equal(before[i], b) for i, b in mon._updates._buffers.items())
            pointers[step] = sorted(b.data_ptr() for b in mon._updates._buffers.values())
    assert copies == [0, 3, 6] and subtractions == [0, 3, 6]
    assert pointers[0] == pointers[7] and len(pointers[0]) == 4
    assert sorted(set(gs.open_run(tmp_path / "run").frame(stat="update_ratio").step)) == [0, 3, 6]


def test_run_metadata_says_how_often_update_ratios_and_histograms_are_taken(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "a", optimizer=opt, histograms=4):
        pass
    with gs.watch(model, tmp_path / "b", update_ratio=True):  # no optimizer: no update ratios
        pass
    assert gs.open_run(tmp_path / "a").meta["update_ratio_every"] == 10
    assert gs.open_run(tmp_path / "a").meta["histograms_every"] == 4
    assert gs.open_run(tmp_path / "b").meta["update_ratio_every"] == 0
    assert gs.open_run(tmp_path / "b").meta["histograms_every"] == 0


@pytest.mark.parametrize("every", [1, 2])
def test_update_ratio_rotates_chunks_of_layers_exactly_within_an_eighth_of_the_weights(tmp_path, monkeypatch, every):
    """With the 16 MiB floor lifted, 12 equal layers are measured one chunk at a time: each
    layer exact where recorded, every layer within ``n_chunks`` measured steps, no model row,
    and the snapshot buffers never above 1/8 of the weights' bytes."""
    from gradsight.instrument import update_ratio as ur

    monkeypatch.setattr(ur, "SNAPSHOT_FLOOR_BYTES", 0)
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(12)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    expected: dict[int, dict[str, float]] = {}
    with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=every) as mon:
        n_chunks = mon._updates.n_chunks
        assert n_chunks == 12  # one Linear(64) is 1/12 of the weights: two do not fit in 1/8
        for step in range(n_chunks * every * 2):
            model(torch.randn(8, 64)).pow(2).mean().backward()
            mon.step()
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            opt.step()
            opt.zero_grad()
            after = {n: p.detach().clone() for n, p in model.named_parameters()}
            expected[step] = {str(k): _reference(before, after, [f"{k}.weight", f"{k}.bias"]) for k in range(12)}
        peak = mon._updates.peak_snapshot_bytes
    assert 0 < peak <= weight_bytes / 8
    frame = gs.open_run(tmp_path / "run").frame(stat="update_ratio")
    assert set(frame.level) == {"param", "layer"}  # a model row would combine one chunk only
    layers = frame[frame.level == "layer"]
    for row in layers.itertuples():
        want = expected[row.step][row.name]
        assert abs(row.value - want) <= 1e-5 * want, (row.step, row.name, row.value, want)
    # the j-th measured step (recorded index j * every) measures layer j % 12, so each layer
    # is recorded once in every 12 measured steps, at the steps the docs state
    got = {(int(r.step), r.name) for r in layers.itertuples()}
    assert got == {(j * every, str(j % 12)) for j in range(2 * n_chunks)}


def test_snapshot_chunks_keep_layers_whole_and_a_large_layer_alone():
    from gradsight.instrument.update_ratio import snapshot_chunks

    sizes = [1000, 10, 10, 100, 100, 100, 100, 100]  # elements: 1560, 1/8 of them 195
    watched = [torch.zeros(n) for n in sizes]
    layer_of = np.array([0, 1, 1, 2, 3, 4, 5, 6])
    chunks = snapshot_chunks(watched, layer_of, share=1 / 8, floor=0)
    # layer 0 alone (larger than the budget), layers 1 and 2 together (120), then one a chunk
    assert chunks.tolist() == [0, 1, 1, 1, 2, 3, 4, 5]
    assert snapshot_chunks(watched, layer_of, share=1 / 8, floor=10**6).tolist() == [0] * 8


def test_update_ratio_whole_measures_every_layer_and_the_model_at_every_step_beyond_the_floor(tmp_path, monkeypatch):
    """``update_ratio="whole"`` (what the model check records) keeps one snapshot of every
    watched weight whatever the weights' size: every layer and the model exact at every
    recorded step, where the default rotates chunks of layers."""
    from gradsight.instrument import update_ratio as ur

    monkeypatch.setattr(ur, "SNAPSHOT_FLOOR_BYTES", 0)
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(12)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    names = [n for n, _ in model.named_parameters()]
    expected: dict[int, dict[str, float]] = {}
    with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio="whole") as mon:
        assert mon._updates.n_chunks == 1
        for step in range(4):
            model(torch.randn(8, 64)).pow(2).mean().backward()
            mon.step()
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            opt.step()
            opt.zero_grad()
            after = {n: p.detach().clone() for n, p in model.named_parameters()}
            expected[step] = {str(k): _reference(before, after, [f"{k}.weight", f"{k}.bias"]) for k in range(12)}
            expected[step]["model"] = _reference(before, after, names)
        assert mon._updates.peak_snapshot_bytes == weight_bytes
    frame = gs.open_run(tmp_path / "run").frame(stat="update_ratio")
    rows = frame[frame.level.isin(["layer", "model"])]
    assert len(rows) == 4 * 13  # 12 layers and the model at each of the 4 steps
    for row in rows.itertuples():
        want = expected[row.step]["model" if row.level == "model" else row.name]
        assert abs(row.value - want) <= 1e-5 * want, (row.step, row.name, row.value, want)


def test_update_ratio_option_rejects_an_unknown_word(tmp_path):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="'whole'"):
        gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio="all")
