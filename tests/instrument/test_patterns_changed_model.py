"""A model changed after ``gs.watch``: a parameter given data of another shape (what Hugging
Face's ``resize_token_embeddings`` does) and weights cast to half precision
(``model.half()``, ``model.to(torch.bfloat16)``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradsight as gs
from tests.instrument.test_histograms import ref_headroom


class Tokens(nn.Module):
    def __init__(self, vocab: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, ids):
        return self.out(self.embed(ids))


def _resize(embedding: nn.Embedding, vocab: int) -> None:
    """As ``transformers``' ``resize_token_embeddings``: the same Parameter, new data."""
    old = embedding.weight.data
    new = torch.randn(vocab, old.shape[1]) * 1e-4  # small values: some gradients underflow fp16
    new[: old.shape[0]] = old
    embedding.weight.data = new
    embedding.num_embeddings = vocab


def test_resized_parameter_follows_its_new_shape(tmp_path):
    torch.manual_seed(0)
    model = Tokens()
    with gs.watch(model, tmp_path / "run", histograms=True) as mon:
        model(torch.randint(0, 10, (6,))).sum().backward()
        mon.step()
        model.zero_grad()
        _resize(model.embed, 25)
        ids = torch.arange(25)
        (model(ids) * 1e-6).sum().backward()  # every row gets a gradient, many below fp16's range
        mon.step()
        want = ref_headroom([model.embed.weight.grad])
        mon.flush()
        params = gs.open_run(tmp_path / "run").params().set_index("name")
        assert params.loc["embed.weight", "shape"] == (25, 4)  # while the run is live
    run = gs.open_run(tmp_path / "run")
    got = run.frame(level="param", stat=list(want), steps=[1]).set_index(["name", "stat"]).value
    assert want["fp16_underflow"] > 0
    for stat, value in want.items():
        assert math.isclose(got[("embed.weight", stat)], value, rel_tol=1e-9, abs_tol=1e-12), stat
    params = run.params().set_index("name")
    assert params.loc["embed.weight", "shape"] == (25, 4)
    assert params.loc["embed.weight", "numel"] == 100
    assert run.meta["num_params"] == sum(p.numel() for p in model.parameters())
    assert run.meta["num_trainable"] == run.meta["num_params"]


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
    assert set(run.params().dtype) == {str(dtype).replace("torch.", "")}
