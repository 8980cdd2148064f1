"""``gs.watch(..., histograms=...)``: stored histograms and headroom fractions against a
slow reference (``math.frexp`` per element, actual casts), at param, layer and model level."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.stats.histogram import FORMATS, HEADROOM_STATS, OVERFLOW_FORMATS
from tests.instrument.test_monitor import Tied


def ref_hist(tensors: list[torch.Tensor]) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in tensors:
        dense = t.to_dense() if t.is_sparse else t
        for x in dense.double().reshape(-1).tolist():
            if x != 0 and math.isfinite(x):
                e = math.frexp(abs(x))[1] - 1
                out[e] = out.get(e, 0) + 1
    return out


def ref_headroom(tensors: list[torch.Tensor]) -> dict[str, float]:
    flat = torch.cat([(t.to_dense() if t.is_sparse else t).reshape(-1).float() for t in tensors])
    keep = torch.isfinite(flat) & (flat != 0)
    out = {f"{f}_underflow": float((keep & (flat.to(d).float() == 0)).sum()) / flat.numel()
           for f, d in FORMATS.items()}
    for f in OVERFLOW_FORMATS:
        big = torch.isfinite(flat) & (flat.double().abs() > torch.finfo(FORMATS[f]).max)
        out[f"{f}_overflow"] = float(big.sum()) / flat.numel()
    return out


def layer_grads(model: nn.Module, scale: float = 1.0) -> dict[str, list[torch.Tensor]]:
    """Trainable parameters with a gradient (tied ones once) by owning module, times ``scale``."""
    out: dict[str, list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is not None:
            g = p.grad if scale == 1.0 else p.grad.float() * scale
            out.setdefault(name.rsplit(".", 1)[0] if "." in name else "", []).append(g.detach().clone())
    return out


def params_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def stored(run, level: str, step: int) -> dict[str, dict[int, int]]:
    df = run.histograms(level=level, steps=[step])
    return {n: dict(zip(g.log2_bucket.tolist(), g["count"].tolist())) for n, g in df.groupby("name")}


def headroom(run, level: str, step: int) -> dict[str, dict[str, float]]:
    df = run.frame(level=level, stat=list(HEADROOM_STATS), steps=[step])
    return {n: dict(zip(g.stat, g.value)) for n, g in df.groupby("name")}


def spread_model() -> nn.Sequential:
    """A model whose gradients span from fp8 underflow to fp16 overflow."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))
    return model


def set_spread(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(3)
    for p in model.parameters():
        if p.grad is None:
            continue
        exps = torch.randint(-40, 20, p.shape, generator=gen).float()
        p.grad.copy_(torch.sign(torch.randn(p.shape, generator=gen)) * torch.pow(2.0, exps) *
                     (1 + torch.rand(p.shape, generator=gen)))
    model[0].weight.grad[0, :3] = torch.tensor([2.0**-25, 2.0**-17, 65520.0])  # edges: tie to 0, tie, overflow
    model[0].weight.grad[1, 0] = 0.0


def test_histograms_and_headroom_at_every_level(tmp_path):
    model = spread_model()
    with gs.watch(model, tmp_path / "run", histograms=True) as mon:
        model(torch.randn(5, 6)).sum().backward()
        set_spread(model)
        mon.step()
        by_layer = layer_grads(model)
        by_param = params_grads(model)
    run = gs.open_run(tmp_path / "run")
    assert stored(run, "layer", 0) == {k: ref_hist(v) for k, v in by_layer.items()}
    everything = [g for v in by_layer.values() for g in v]
    assert stored(run, "model", 0) == {"": ref_hist(everything)}
    for level, want in (("param", {n: ref_headroom([g]) for n, g in by_param.items()}),
                        ("layer", {k: ref_headroom(v) for k, v in by_layer.items()}),
                        ("model", {"": ref_headroom(everything)})):
        got = headroom(run, level, 0)
        assert got.keys() == want.keys()
        for name in want:
            for stat, value in want[name].items():
                assert got[name][stat] == pytest.approx(value, rel=1e-12, abs=0), (level, name, stat)
    assert headroom(run, "model", 0)[""]["fp8e4m3_underflow"] > 0
    assert headroom(run, "model", 0)[""]["fp16_overflow"] > 0


def test_every_k_recorded_steps_and_columns(tmp_path):
    model = spread_model()
    with gs.watch(model, tmp_path / "run", every=2, histograms=3) as mon:
        for _ in range(13):
            model.zero_grad()
            model(torch.randn(5, 6)).sum().backward()
            mon.step()
    run = gs.open_run(tmp_path / "run")
    df = run.histograms()
    assert list(df.columns) == ["step", "level", "name", "log2_bucket", "count"]
    assert sorted(set(df.step)) == [0, 6, 12]  # recorded steps 0, 2, 4, ...: every 3rd of those
    assert set(run.frame(stat="fp16_underflow").step) == {0, 6, 12}
    assert set(df.level) == {"layer"} and set(run.histograms(level="model").name) == {""}
    assert set(run.histograms(name="2").name) == {"2"}
    # every nonzero finite element is in a bucket
    assert run.histograms(level="model", steps=[6])["count"].sum() == sum(p.numel() for p in model.parameters())


def test_histograms_off_by_default_and_invalid_values(tmp_path):
    model = spread_model()
    with gs.watch(model, tmp_path / "run") as mon:
        model(torch.randn(5, 6)).sum().backward()
        mon.step()
    run = gs.open_run(tmp_path / "run")
    assert run.histograms().empty and "fp16_underflow" not in run.stats()
    for bad in (0, -2, "yes", 1.5):
        with pytest.raises(ValueError, match="histograms"):
            gs.watch(model, tmp_path / f"bad{bad}", histograms=bad)


def test_tied_frozen_and_sparse(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    model.body.bias.requires_grad_(False)
    with gs.watch(model, tmp_path / "run", histograms=True) as mon:
        model(torch.randint(0, 20, (6,))).pow(2).mean().backward()
        mon.step()
        by_layer = layer_grads(model)
    run = gs.open_run(tmp_path / "run")
    assert stored(run, "layer", 0) == {k: ref_hist(v) for k, v in by_layer.items()}
    assert "decoder" not in set(run.histograms().name)  # the tied weight counts once, under its first name
    assert "body.bias" not in set(run.frame(stat="fp16_underflow").name)

    sparse = nn.Sequential(nn.Embedding(50, 4, sparse=True), nn.Linear(4, 1))
    with gs.watch(sparse, tmp_path / "sparse", histograms=True) as mon:
        sparse(torch.tensor([1, 7, 7])).sum().backward()
        mon.step()
        by_layer = layer_grads(sparse)
    run = gs.open_run(tmp_path / "sparse")
    assert stored(run, "layer", 0) == {k: ref_hist(v) for k, v in by_layer.items()}
    frac = headroom(run, "param", 0)["0.weight"]
    assert frac == pytest.approx(ref_headroom(by_layer["0"]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_gradients(tmp_path, dtype):
    torch.manual_seed(0)
    model = nn.Linear(64, 32).to(dtype)
    with gs.watch(model, tmp_path / "run", histograms=True) as mon:
        (model(torch.randn(4, 64, dtype=dtype)).float().pow(2).mean() * 1e-3).backward()
        mon.step()
        by_layer = layer_grads(model)
    run = gs.open_run(tmp_path / "run")
    assert stored(run, "model", 0) == {"": ref_hist(by_layer[""])} and min(stored(run, "model", 0)[""]) < -14
    got = headroom(run, "model", 0)[""]
    assert got == pytest.approx(ref_headroom(by_layer[""]))
    if dtype == torch.float16:
        assert got["fp16_underflow"] == 0  # what is already fp16 does not underflow fp16


def test_loss_scale_is_applied_as_stored(tmp_path):
    model = spread_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with gs.watch(model, tmp_path / "run", optimizer=opt, scaler=scaler, histograms=True) as mon:
        # step 0: gradients carry the scale: taken as they are
        scaler.scale(model(torch.randn(5, 6)).pow(2).mean() * 1e-6).backward()
        mon.step()
        scaled0 = layer_grads(model)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        # step 1: unscaled by the user: multiplied by the scale again
        scaler.scale(model(torch.randn(5, 6)).pow(2).mean() * 1e-6).backward()
        scaler.unscale_(opt)
        mon.step()
        rescaled1 = layer_grads(model, scale=float(scaler.get_scale()))
        scaler.step(opt)
        scaler.update()
    run = gs.open_run(tmp_path / "run")
    assert stored(run, "layer", 0) == {k: ref_hist(v) for k, v in scaled0.items()}
    assert stored(run, "layer", 1) == {k: ref_hist(v) for k, v in rescaled1.items()}
    everything = [g for v in rescaled1.values() for g in v]
    assert headroom(run, "model", 1)[""] == pytest.approx(ref_headroom(everything))


def test_listeners_receive_the_histograms(tmp_path):
    model = spread_model()
    seen = []
    with gs.watch(model, tmp_path / "run", histograms=True) as mon:
        mon.add_listener(lambda *a: None, on_histograms=lambda step, keys, lo, dense: seen.append((step, keys, lo,
                                                                                                  dense.copy())))
        model(torch.randn(5, 6)).sum().backward()
        mon.step()
    run = gs.open_run(tmp_path / "run")
    (step, keys, lo, dense), = seen
    assert step == 0 and keys[-1] == ("model", "")
    model_row = dense[-1]
    nz = np.flatnonzero(model_row)
    want = stored(run, "model", 0)[""]
    assert dict(zip((nz + lo).tolist(), model_row[nz].tolist())) == want
