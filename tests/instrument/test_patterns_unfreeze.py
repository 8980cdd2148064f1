"""Gradual unfreezing: parameters frozen at ``gs.watch`` and unfrozen later are recorded from
the step they have a gradient (parameter, layer and model rows, ``update_ratio``, histograms),
the model's ``grad_norm`` stays what ``clip_grad_norm_`` returns, and a parameter frozen later
gets no rows made up from a gradient left over from before."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

import gradsight as gs
from tests.instrument.reference import reference


class Transfer(nn.Module):
    """A backbone and a head; ``scale``, the model's own parameter, is a layer of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.scale = nn.Parameter(torch.ones(16))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.backbone(x) * self.scale)


def _by_step(frame) -> dict[int, dict[tuple[str, str, str], float]]:
    out: dict[int, dict[tuple[str, str, str], float]] = {}
    for r in frame.itertuples():
        out.setdefault(int(r.step), {})[(r.level, r.name, r.stat)] = r.value
    return out


def _ratio(before: dict, after: dict, names: list[str]) -> float:
    dsq = sum(float((after[n] - before[n]).pow(2).sum()) for n in names)
    wsq = sum(float(before[n].pow(2).sum()) for n in names)
    return math.sqrt(dsq / wsq)


def test_unfrozen_parameters_are_recorded_from_their_first_gradient(tmp_path):
    torch.manual_seed(0)
    model = Transfer()
    model.backbone.requires_grad_(False)
    model.scale.requires_grad_(False)
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1, momentum=0.9)
    refs, clips, ratios = {}, {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unfreezing is an ordinary pattern: nothing to warn about
        with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=True, histograms=True) as mon:
            for step in range(4):
                if step == 2:  # ULMFiT / timm: unfreeze, and give the optimizer the new parameters
                    model.backbone.requires_grad_(True)
                    model.scale.requires_grad_(True)
                    opt.add_param_group({"params": [*model.backbone.parameters(), model.scale]})
                opt.zero_grad()
                model(torch.randn(5, 8)).pow(2).mean().backward()
                mon.step()
                refs[step] = reference(model)
                clips[step] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf))
                before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
                opt.step()
                after = {n: p.detach().double().clone() for n, p in model.named_parameters()}
                names = [n for n, p in model.named_parameters() if p.requires_grad]
                ratios[step] = {("param", n): _ratio(before, after, [n]) for n in names}
                ratios[step][("model", "")] = _ratio(before, after, names)
                if step >= 2:
                    ratios[step][("layer", "backbone.0")] = _ratio(before, after, ["backbone.0.weight",
                                                                                   "backbone.0.bias"])
    run = gs.open_run(tmp_path / "run")
    got = _by_step(run.frame())
    for step in range(4):
        want = refs[step]
        assert {name for level, name, _ in got[step] if level == "param"} == {n for lvl, n in want if lvl == "param"}
        for (level, name), stats in want.items():
            for stat, value in stats.items():
                have = got[step][(level, name, stat)]
                assert math.isclose(have, value, rel_tol=2e-6, abs_tol=1e-9), (step, level, name, stat, have, value)
        assert math.isclose(got[step][("model", "", "grad_norm")], clips[step], rel_tol=2e-6)
        for key, value in ratios[step].items():
            assert math.isclose(got[step][(*key, "update_ratio")], value, rel_tol=2e-6), (step, key)
        assert ("model", "", "grad_missing") not in got[step]  # frozen is not missing
    assert not any(name.startswith("backbone") for _, name, _ in got[1])
    assert got[2][("layer", "backbone.2", "fp16_underflow")] >= 0  # histograms of the joined layers too

    params = run.params().set_index("name")
    assert params["trainable"].all()  # every parameter was recorded at some step
    assert run.meta["unfrozen"] == {n: 2 for n in ["backbone.0.weight", "backbone.0.bias", "backbone.2.weight",
                                                   "backbone.2.bias", "scale"]}
    assert run.meta["num_trainable"] == sum(p.numel() for p in model.parameters())
    layers = run.layers()
    assert layers.name.tolist() == ["backbone.0", "backbone.2", "scale", "head"]  # forward order: placed at watch
    assert layers.depth.tolist() == [0, 1, 2, 3]
    assert layers.set_index("name").loc["head", "role"] == "head"


def test_parameter_frozen_later_gets_no_rows_from_its_left_over_gradient(tmp_path):
    torch.manual_seed(1)
    model = Transfer()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "run") as mon:
        for step in range(3):
            if step == 1:
                model.backbone[0].requires_grad_(False)  # its .grad stays, zeroed in place below
            opt.zero_grad(set_to_none=False)
            model(torch.randn(5, 8)).pow(2).mean().backward()
            mon.step()
            if step == 1:
                ref = reference(model)
                clip = float(torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                            math.inf))
            opt.step()
    got = _by_step(gs.open_run(tmp_path / "run").frame())
    assert ("param", "backbone.0.weight", "grad_norm") in got[0]
    for step in (1, 2):
        assert not any(name.startswith("backbone.0") for _, name, _ in got[step])  # no zeros made up, no missing
        assert ("model", "", "grad_missing") not in got[step]
    for (level, name), stats in ref.items():
        for stat, value in stats.items():
            assert math.isclose(got[1][(level, name, stat)], value, rel_tol=2e-6, abs_tol=1e-9), (level, name, stat)
    assert math.isclose(got[1][("model", "", "grad_norm")], clip, rel_tol=2e-6)


def test_frozen_at_watch_and_never_unfrozen_stays_out(tmp_path):
    model = Transfer()
    model.backbone.requires_grad_(False)
    model.scale.requires_grad_(False)
    with gs.watch(model, tmp_path / "run") as mon:
        model(torch.randn(5, 8)).sum().backward()
        mon.step()
    run = gs.open_run(tmp_path / "run")
    assert set(run.frame(level="param").name) == {"head.weight", "head.bias"}
    assert run.layers().name.tolist() == ["head"]
    assert not run.params().set_index("name").loc["backbone.0.weight", "trainable"]
    assert run.meta.get("unfrozen", {}) == {}
    assert not any(name.startswith("backbone") for name in run.frame().name)
