"""Several optimizers over disjoint parameter sets (SparseAdam + Adam, Muon + AdamW):
``update_ratio`` of each parameter across the step of the optimizer that holds it, against
float64 copies of the weights taken around each ``optimizer.step()``; a parameter whose
optimizer is not watched has no ``update_ratio`` (never 0), and the doctor does not call it
slow."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.instrument.options import watch_options

UNOWNED_WARNING = ("gradsight: {n} parameter(s) with a gradient are in none of the optimizers passed to "
                   "gs.watch(optimizer=...), so no update_ratio is recorded for them: {names}; pass every "
                   "optimizer that steps them (optimizer=[opt_a, opt_b]), or, if none does (a layer replaced after "
                   "the optimizer was built), build the optimizer over the final model")


class Tagger(nn.Module):
    """An embedding table (sparse gradients or not) and an MLP; ``hidden`` has a 2-d weight and a bias."""

    def __init__(self, sparse: bool) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 12, sparse=sparse)
        self.hidden = nn.Linear(12, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(self.emb(tokens))))


def _optimizers(model: Tagger, pair: str) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Two optimizers over disjoint parameter sets; ``hidden`` is split between them for Muon."""
    if pair == "sparse":
        dense = [p for n, p in model.named_parameters() if not n.startswith("emb.")]
        return torch.optim.SparseAdam(list(model.emb.parameters()), lr=1e-2), torch.optim.Adam(dense, lr=1e-2)
    rest = [p for n, p in model.named_parameters() if n != "hidden.weight"]
    return torch.optim.Muon([model.hidden.weight], lr=2e-2), torch.optim.AdamW(rest, lr=1e-2)


def _layer(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _ratio(moves: dict[str, tuple[torch.Tensor, torch.Tensor]], names: list[str]) -> float:
    """||w_after - w_before|| / ||w_before|| over ``names``, in float64."""
    dsq = sum(float((moves[n][1] - moves[n][0]).pow(2).sum()) for n in names)
    wsq = sum(float(moves[n][0].pow(2).sum()) for n in names)
    return math.sqrt(dsq / wsq)


def _step(opt: torch.optim.Optimizer, model: nn.Module, moves: dict, step=None) -> None:
    """``opt.step()`` (or ``step(opt)``), noting float64 copies of its parameters around it."""
    names = {id(p): n for n, p in model.named_parameters()}
    mine = [p for group in opt.param_groups for p in group["params"]]
    before = {names[id(p)]: p.detach().double().clone() for p in mine}
    (step or (lambda o: o.step()))(opt)
    for p in mine:
        moves[names[id(p)]] = (before[names[id(p)]], p.detach().double().clone())


def _expected(moves: dict, measured: list[str]) -> dict[tuple[str, str], float]:
    """The rows a step must have: each measured parameter, its layer, the model (of those only)."""
    want = {("param", n): _ratio(moves, [n]) for n in measured}
    for layer in {_layer(n) for n in measured}:
        want[("layer", layer)] = _ratio(moves, [n for n in measured if _layer(n) == layer])
    want[("model", "")] = _ratio(moves, measured)
    return want


def _train(tmp_path, pair: str, order: str, watched: str, steps: int = 3, **options):
    """``steps`` steps of two optimizers (``order``: which steps first); ``watched``: both, the
    first or the second one. Returns the recorded update ratios and the expected ones, per step."""
    torch.manual_seed(0)
    model = Tagger(sparse=pair == "sparse")
    first, second = _optimizers(model, pair)
    optimizer = {"both": [first, second], "first": first, "second": second}[watched]
    expected = {}
    with gs.watch(model, tmp_path / "run", optimizer=optimizer, update_ratio=True, **options) as mon:
        for step in range(steps):
            tokens = torch.randint(0, 40, (8, 5))
            model(tokens).pow(2).mean().backward()
            mon.step()
            moves: dict = {}
            for opt in ([first, second] if order == "first" else [second, first]):
                _step(opt, model, moves)
            first.zero_grad()
            second.zero_grad()
            owned = [n for n, p in model.named_parameters()
                     if watched == "both" or any(p is q for g in optimizer.param_groups for q in g["params"])]
            expected[step] = _expected(moves, owned)
    frame = gs.open_run(tmp_path / "run").frame(stat="update_ratio")
    got = {step: {(r.level, r.name): r.value for r in frame[frame.step == step].itertuples()} for step in expected}
    return got, expected


@pytest.mark.parametrize("pair", ["sparse", "muon"])
@pytest.mark.parametrize("order", ["first", "second"])
def test_each_parameter_measured_across_its_own_optimizers_step_within_1e_6(tmp_path, pair, order):
    got, expected = _train(tmp_path, pair, order, watched="both")
    for step, want in expected.items():
        assert set(got[step]) == set(want), step
        for key, value in want.items():
            assert abs(got[step][key] - value) <= 1e-6 * value, (step, key, got[step][key], value)


@pytest.mark.parametrize("pair", ["sparse", "muon"])
@pytest.mark.parametrize("order", ["first", "second"])
def test_parameters_of_an_unwatched_optimizer_have_no_update_ratio(tmp_path, pair, order):
    """Regression: with ``optimizer=`` one of two, the other's parameters read 0 when it
    stepped after the watched one (and its step when before). Now they have no row; the
    layer split between the two (Muon: ``hidden``) and the model combine the measured ones."""
    with pytest.warns(UserWarning) as caught:
        got, expected = _train(tmp_path, pair, order, watched="first")
    unowned = ["emb.weight", "hidden.bias", "out.weight", "out.bias"]  # Muon holds hidden.weight only
    if pair == "sparse":  # SparseAdam holds the embedding
        unowned = ["hidden.weight", "hidden.bias", "out.weight", "out.bias"]
    messages = [str(w.message) for w in caught if "update_ratio" in str(w.message)]
    assert messages == [UNOWNED_WARNING.format(n=len(unowned), names=", ".join(unowned))]
    for step, want in expected.items():
        assert not any(("param", n) in got[step] for n in unowned), step
        assert set(got[step]) == set(want), step
        for key, value in want.items():
            assert abs(got[step][key] - value) <= 1e-6 * value, (step, key, got[step][key], value)


def test_the_doctor_does_not_call_the_unwatched_optimizers_layers_slow(tmp_path):
    """Regression: the embedding, stepped by SparseAdam after the watched Adam, read
    update_ratio 0 and the doctor said its layer "barely learns"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _train(tmp_path, "sparse", "second", watched="second", steps=6)
    findings = gs.diagnose(tmp_path / "run")
    assert not [f for f in findings if "barely learn" in f.message]
    assert "emb" not in set(gs.open_run(tmp_path / "run").frame(stat="update_ratio").layer.dropna())
    # another optimizer steps the embedding: said as an info, never "nothing trains them"
    [outside] = [f for f in findings if f.code == "not_updated"]
    assert outside.severity == "info" and outside.layers == ["emb"]


def test_a_layer_replaced_after_the_optimizer_was_built_is_said_to_be_untrained(tmp_path):
    """The fine-tuning slip: the head swapped for a new one after ``Adam(model.parameters())``.
    The new head gets gradients and never changes (float64 copies before and after)."""
    torch.manual_seed(0)
    model = Tagger(sparse=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.out = nn.Linear(16, 3)
    before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    tokens = torch.randint(0, 40, (8, 5))
    with pytest.warns(UserWarning, match="build the optimizer over the final model"):
        with gs.watch(model, tmp_path / "run", optimizer=opt) as mon:
            for _ in range(4):
                nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten() % 3).backward()
                mon.step()
                opt.step()
                opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach().double(), before[n])}
    assert changed == {"emb.weight", "hidden.weight", "hidden.bias"}
    with gs.open_run(tmp_path / "run") as run:
        assert run.meta["outside_optimizers"] == ["out.bias", "out.weight"]
    [finding] = [f for f in gs.diagnose(tmp_path / "run") if f.code == "not_updated"]
    assert finding.severity == "warning" and finding.layers == ["out"]
    assert finding.measured == {"parameters": 2.0, "layers": 1.0} and "nothing trains them" in finding.message


class TwoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_grad_scaler_skips_one_optimizer_the_other_is_still_measured(tmp_path):
    """``scaler.step`` skips the optimizer whose gradients are not finite: its parameters get
    no update_ratio at that step, the other's are measured (float64 reference), and the step is
    marked ``skipped``."""
    torch.manual_seed(0)
    model = TwoBlocks()
    opt_a = torch.optim.Adam(model.a.parameters(), lr=1e-2)
    opt_b = torch.optim.SGD(model.b.parameters(), lr=1e-1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    expected = {}
    with gs.watch(model, tmp_path / "run", optimizer=[opt_a, opt_b], scaler=scaler, update_ratio=True) as mon:
        for step in range(3):
            scaler.scale(model(torch.randn(4, 6)).pow(2).mean()).backward()
            if step == 1:
                model.a.weight.grad[0, 0] = math.inf
            mon.step()
            moves: dict = {}
            for opt in (opt_a, opt_b):
                _step(opt, model, moves, step=scaler.step)
            scaler.update()
            opt_a.zero_grad()
            opt_b.zero_grad()
            stepped = [n for n in moves if step != 1 or n.startswith("b.")]
            expected[step] = _expected(moves, stepped)
    run = gs.open_run(tmp_path / "run")
    frame = run.frame(stat="update_ratio")
    for step, want in expected.items():
        got = {(r.level, r.name): r.value for r in frame[frame.step == step].itertuples()}
        assert set(got) == set(want), step
        for key, value in want.items():
            assert abs(got[key] - value) <= 1e-6 * value, (step, key, got[key], value)
    skipped = run.frame(stat="skipped", level="model").set_index("step").value
    assert list(skipped) == [0.0, 1.0, 0.0]


def test_grad_scaler_unscaled_for_every_watched_optimizer_is_not_divided_again(tmp_path):
    torch.manual_seed(0)
    model = TwoBlocks()
    opt_a = torch.optim.SGD(model.a.parameters(), lr=1e-2)
    opt_b = torch.optim.SGD(model.b.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    with gs.watch(model, tmp_path / "run", optimizer=[opt_a, opt_b], scaler=scaler) as mon:
        scaler.scale(model(torch.randn(4, 6)).pow(2).mean()).backward()
        scaler.unscale_(opt_a)
        scaler.unscale_(opt_b)
        want = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()))
        mon.step()
        scaler.step(opt_a)
        scaler.step(opt_b)
        scaler.update()
        opt_a.zero_grad()
        opt_b.zero_grad()
        with pytest.warns(UserWarning, match="for some of the optimizers passed to gs.watch but not for the others"):
            scaler.scale(model(torch.randn(4, 6)).pow(2).mean()).backward()
            scaler.unscale_(opt_a)
            mon.step()
    got = gs.open_run(tmp_path / "run").frame(stat="grad_norm", level="model").set_index("step").value
    assert math.isclose(got[0], want, rel_tol=1e-6)


def test_optimizer_takes_a_list_or_tuple_of_optimizers(tmp_path):
    model = TwoBlocks()
    opt_a = torch.optim.SGD(model.a.parameters(), lr=0.1)
    opt_b = torch.optim.Adam(model.b.parameters(), lr=0.1)
    assert watch_options(optimizer=opt_a).optimizer is opt_a
    assert watch_options(optimizer=opt_a).optimizers == (opt_a,)
    assert watch_options(optimizer=[opt_a, opt_b, opt_a]).optimizer == (opt_a, opt_b)
    assert watch_options(optimizer=(opt_b,)).optimizers == (opt_b,)
    assert watch_options(optimizer=[]).optimizer is None and watch_options().optimizers == ()
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer, a list of them or None"):
        watch_options(optimizer=[opt_a, "adam"])
    with gs.watch(model, tmp_path / "run", optimizer=[opt_a, opt_b]):
        pass
    assert gs.open_run(tmp_path / "run").meta["optimizer"] == "SGD, Adam"
