"""Recurrent layers: one weighted layer per stacked layer and direction, per-gate gradient
norms and the gradient through time, each against an independent float64 / autograd
computation (a slice of ``.grad`` per gate; ``torch.autograd.grad`` of the loss with respect
to the output sequence on an unwatched copy of the model)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.instrument.layers import param_layers
from gradsight.instrument.recurrent import (
    PROBE_SAMPLES,
    PROBE_SEED,
    TIME_GAIN_REVERSE_STAT,
    TIME_GAIN_STAT,
    TIME_STEPS_STAT,
    gate_stat,
    stacked_layer,
    time_gains,
    time_stat,
)

VOCAB, EMBED, HIDDEN, SEQ, BATCH = 40, 12, 16, 9, 5


class LSTMLanguageModel(nn.Module):
    """pytorch/examples' word_language_model in small: embedding -> 2-layer LSTM -> linear."""

    def __init__(self, rnn: nn.RNNBase | None = None) -> None:
        super().__init__()
        self.encoder = nn.Embedding(VOCAB, EMBED)
        self.rnn = rnn if rnn is not None else nn.LSTM(EMBED, HIDDEN, num_layers=2)
        width = self.rnn.hidden_size * (2 if self.rnn.bidirectional else 1)
        self.decoder = nn.Linear(width, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(self.encoder(tokens))
        self.output_sequence = output  # for the reference computation of the test only
        return self.decoder(output)


def batch(seed: int, batch_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (BATCH, SEQ) if batch_first else (SEQ, BATCH)
    return torch.randint(0, VOCAB, shape, generator=g), torch.randint(0, VOCAB, shape, generator=g)


def lm_loss(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(tokens).reshape(-1, VOCAB), targets.reshape(-1))


def train(model: nn.Module, run_dir: Path, steps: int = 3, batch_first: bool = False, **options):
    """Train with AdamW under gs.watch(through_time=True); per step, the reference values:
    every parameter's .grad in float64 and ``autograd.grad(loss, output sequence)`` of an
    unwatched copy of the model (copies of a watched model run none of its hooks)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    grads, seq_grads = [], []
    with gs.watch(model, run_dir, optimizer=opt, through_time=True, **options) as mon:
        for step in range(steps):
            tokens, targets = batch(step, batch_first)
            model.__dict__.pop("output_sequence", None)  # (a graph's tensor: not copied)
            twin = copy.deepcopy(model)
            twin_loss = lm_loss(twin, tokens, targets)
            seq_grads.append(torch.autograd.grad(twin_loss, twin.output_sequence)[0].double())
            opt.zero_grad()
            loss = lm_loss(model, tokens, targets)
            loss.backward()
            grads.append({n: p.grad.detach().double().clone() for n, p in model.named_parameters()})
            mon.step(loss)
            opt.step()
    return grads, seq_grads


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
    torch.manual_seed(0)
    model = LSTMLanguageModel()
    run_dir = tmp_path_factory.mktemp("lstm") / "run"
    grads, seq_grads = train(model, run_dir, activations=True)
    return run_dir, grads, seq_grads


def test_stacked_layer_names():
    assert stacked_layer("weight_ih_l0") == "l0"
    assert stacked_layer("bias_hh_l12_reverse") == "l12_reverse"
    assert stacked_layer("weight_hr_l1") == "l1"  # an LSTM's projection (proj_size) belongs to its layer
    assert stacked_layer("weight_ih") is None  # a cell's: one layer, the cell
    assert stacked_layer("weight") is None


def test_lstm_is_one_weighted_layer_per_stacked_layer(lstm_run):
    """An nn.LSTM used to be one layer of role ``other`` (the flow plot drew only the decoder)."""
    run_dir, _, _ = lstm_run
    with gs.open_run(run_dir) as run:
        layers = run.layers()
        params = run.params().set_index("name")
    assert list(layers["name"]) == ["encoder", "rnn.l0", "rnn.l1", "decoder"]  # forward order
    assert list(layers["role"]) == ["embedding", "weighted", "weighted", "head"]
    assert list(layers["module_type"]) == ["Embedding", "LSTM", "LSTM", "Linear"]
    for k in (0, 1):
        for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            assert params.loc[f"rnn.{p}_l{k}", "layer"] == f"rnn.l{k}"


def test_stacked_layer_rows_match_float64(lstm_run):
    """grad_norm and grad_dead_rows of rnn.l0 and rnn.l1: of their own four tensors, not pooled."""
    run_dir, grads, _ = lstm_run
    view = gs.RunView(run_dir)
    norm = view.matrix("layer", "grad_norm", steps="all")
    dead = view.matrix("layer", "grad_dead_rows", steps="all")
    for step, g in enumerate(grads):
        for k in (0, 1):
            own = [g[f"rnn.{p}_l{k}"] for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            want = math.sqrt(sum(float(t.pow(2).sum()) for t in own))
            assert math.isclose(norm.loc[step, f"rnn.l{k}"], want, rel_tol=1e-5)
            zero_rows = sum(int((t.reshape(t.shape[0], -1) == 0).all(1).sum()) for t in own if t.dim() >= 2)
            assert dead.loc[step, f"rnn.l{k}"] == zero_rows
    # the first/last ratio of the weighted layers is defined (it was nan with one LSTM row)
    assert math.isfinite(gs.plots.first_last_ratio(run_dir))


def reference_gate_norms(g: dict[str, torch.Tensor], module: str, suffix: str, gates: tuple[str, ...],
                         hidden: int) -> dict[str, float]:
    """Per gate, the norm over weight_ih, weight_hh, bias_ih, bias_hh of that gate's rows, by slicing."""
    out = {}
    for k, gate in enumerate(gates):
        rows = slice(k * hidden, (k + 1) * hidden)
        out[gate] = math.sqrt(sum(float(g[f"{module}.{p}{suffix}"][rows].pow(2).sum())
                                  for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
    return out


def test_lstm_gate_norms_match_float64_slices(lstm_run):
    run_dir, grads, _ = lstm_run
    view = gs.RunView(run_dir)
    gates = ("input", "forget", "cell", "output")  # PyTorch's row order i, f, g, o
    tables = {gate: view.matrix("layer", gate_stat(gate), steps="all") for gate in gates}
    for step, g in enumerate(grads):
        for k in (0, 1):
            want = reference_gate_norms(g, "rnn", f"_l{k}", gates, HIDDEN)
            for gate in gates:
                assert math.isclose(tables[gate].loc[step, f"rnn.l{k}"], want[gate], rel_tol=1e-5), (step, k, gate)
    # the gates partition the layer's rows: their squares add up to the layer's grad_norm
    total = np.sqrt(sum(tables[gate].to_numpy() ** 2 for gate in gates))
    np.testing.assert_allclose(total, view.matrix("layer", "grad_norm", steps="all")[["rnn.l0", "rnn.l1"]].to_numpy(),
                               rtol=1e-5)


def test_gradient_through_time_matches_autograd(lstm_run):
    """out_grad_norm_t<t> = ‖∂L/∂output[t]‖ over the batch and features, from torch.autograd.grad."""
    run_dir, _, seq_grads = lstm_run
    view = gs.RunView(run_dir)
    for t in range(SEQ):
        got = view.matrix("module", time_stat(t), steps="all")["rnn"]
        for step, sg in enumerate(seq_grads):
            assert math.isclose(got.loc[step], float(sg[t].norm()), rel_tol=1e-5), (t, step)
    assert time_stat(SEQ) not in view.stats("module")
    # with activations=True, the time steps' squares add up to the whole output's out_grad_norm
    whole = view.matrix("module", "out_grad_norm", steps="all")["rnn"].to_numpy()
    per_t = np.sqrt(sum(view.matrix("module", time_stat(t), steps="all")["rnn"].to_numpy() ** 2 for t in range(SEQ)))
    np.testing.assert_allclose(per_t, whole, rtol=1e-5)


def test_bidirectional_gru_has_reverse_layers_gates_and_time(tmp_path):
    torch.manual_seed(1)
    model = LSTMLanguageModel(nn.GRU(EMBED, HIDDEN, num_layers=2, bidirectional=True, batch_first=True))
    grads, seq_grads = train(model, tmp_path / "run", steps=2, batch_first=True)
    view = gs.RunView(tmp_path / "run")
    names = ["rnn.l0", "rnn.l0_reverse", "rnn.l1", "rnn.l1_reverse"]
    layers = view.layers()
    assert list(layers["name"]) == ["encoder", *names, "decoder"]
    assert set(layers.set_index("name").loc[names, "role"]) == {"weighted"}
    gates = ("reset", "update", "new")  # r, z, n
    for step, g in enumerate(grads):
        for name in names:
            want = reference_gate_norms(g, "rnn", name[len("rnn."):].replace("l", "_l", 1), gates, HIDDEN)
            for gate in gates:
                got = view.matrix("layer", gate_stat(gate), steps="all").loc[step, name]
                assert math.isclose(got, want[gate], rel_tol=1e-5), (step, name, gate)
        for t in range(SEQ):  # batch_first: time is dim 1
            got = view.matrix("module", time_stat(t), steps="all").loc[step, "rnn"]
            assert math.isclose(got, float(seq_grads[step][:, t].norm()), rel_tol=1e-5)


def test_through_time_is_opt_in(tmp_path):
    model = LSTMLanguageModel()
    with gs.watch(model, tmp_path / "run") as mon:
        lm_loss(model, *batch(0)).backward()
        mon.step()
    with gs.open_run(tmp_path / "run") as run:
        assert not [s for s in run.stats("module") if s.startswith("out_grad_norm_t")]
        assert gate_stat("forget") in run.stats("layer")  # gates cost one pass over four small tensors


def test_cells_are_weighted_layers_with_gates(tmp_path):
    class CellNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.LSTMCell(6, HIDDEN)
            self.gru = nn.GRUCell(HIDDEN, HIDDEN)
            self.rnn = nn.RNNCell(HIDDEN, HIDDEN)
            self.out = nn.Linear(HIDDEN, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = c = torch.zeros(x.shape[1], HIDDEN)
            g = r = h
            for x_t in x:
                h, c = self.cell(x_t, (h, c))
                g = self.gru(h, g)
                r = self.rnn(g, r)
            return self.out(r)

    torch.manual_seed(2)
    model = CellNet()
    with gs.watch(model, tmp_path / "run") as mon:
        model(torch.randn(4, 3, 6)).sum().backward()
        mon.step()
    g = {n: p.grad.double() for n, p in model.named_parameters()}
    view = gs.RunView(tmp_path / "run")
    assert list(view.layers()["role"]) == ["weighted", "weighted", "weighted", "head"]
    want = reference_gate_norms(g, "cell", "", ("input", "forget", "cell", "output"), HIDDEN)
    want_gru = reference_gate_norms(g, "gru", "", ("reset", "update", "new"), HIDDEN)
    for gate, value in want.items():
        assert math.isclose(view.matrix("layer", gate_stat(gate)).loc[0, "cell"], value, rel_tol=1e-5)
    for gate, value in want_gru.items():
        assert math.isclose(view.matrix("layer", gate_stat(gate)).loc[0, "gru"], value, rel_tol=1e-5)
    assert "rnn" not in view.matrix("layer", gate_stat("input")).columns  # nn.RNNCell: no gates


def test_param_layers_of_the_graph_follow_the_run():
    model = LSTMLanguageModel(nn.LSTM(EMBED, HIDDEN, num_layers=2, bidirectional=True))
    layers = param_layers(model)
    assert layers["rnn.weight_hh_l1_reverse"] == "rnn.l1_reverse"
    assert layers["rnn.bias_ih_l0"] == "rnn.l0"


# -- the gain of the gradient through time: a float64 unroll of the cells, by hand ----------

def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-x))


def _lstm_by_hand(x, weights, h0, c0):
    """One LSTM layer over ``x`` (T, B, F) in float64: gates i, f, g, o in PyTorch's row order."""
    w_ih, w_hh, b_ih, b_hh = (w.double() for w in weights)
    h, c, outs = h0, c0, []
    for x_t in x:
        i, f, g, o = (x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * torch.tanh(g)
        h = _sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs)


def _gru_by_hand(x, weights, h0):
    """One GRU layer over ``x`` (T, B, F) in float64: gates r, z, n in PyTorch's row order."""
    w_ih, w_hh, b_ih, b_hh = (w.double() for w in weights)
    h, outs = h0, []
    for x_t in x:
        ir, iz, in_ = (x_t @ w_ih.T + b_ih).chunk(3, dim=-1)
        hr, hz, hn = (h @ w_hh.T + b_hh).chunk(3, dim=-1)
        r, z = _sigmoid(ir + hr), _sigmoid(iz + hz)
        h = (1 - z) * torch.tanh(in_ + r * hn) + z * h
        outs.append(h)
    return torch.stack(outs)


def _gain_by_hand(end: torch.Tensor, u: torch.Tensor, states: list[torch.Tensor], steps: int) -> float:
    """(‖∂(u·h_end)/∂ initial states‖ / ‖u‖) ** (1 / T)."""
    grads = torch.autograd.grad((u * end).sum(), states)
    norm = math.sqrt(sum(float(g.square().sum()) for g in grads))
    return (norm / float(u.norm())) ** (1 / steps)


def _record_one_step(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor, run_dir: Path) -> torch.Tensor:
    """One watched step (through_time=True); returns the recurrent module's input, as it ran."""
    inputs = model.encoder(tokens).detach()
    with gs.watch(model, run_dir, through_time=True) as mon:
        lm_loss(model, tokens, targets).backward()
        mon.step()
    return inputs


def test_time_gain_of_a_stacked_lstm_matches_an_unrolled_float64_reference(tmp_path):
    """time_grad_gain: a fixed N(0, 1) projection (seed PROBE_SEED) of the top layer's last output, its
    gradient with respect to the initial h and c of both layers, over the projection, to the 1/T."""
    torch.manual_seed(0)
    model = LSTMLanguageModel()  # 2 layers, time-major
    tokens, targets = batch(0)
    x = _record_one_step(model, tokens, targets, tmp_path / "run")
    k = min(PROBE_SAMPLES, BATCH)
    x = x[:, :k].double()
    states = [torch.zeros(k, HIDDEN, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    layer_input = x
    for layer in (0, 1):
        weights = [getattr(model.rnn, f"{w}_l{layer}") for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        layer_input = _lstm_by_hand(layer_input, weights, states[2 * layer], states[2 * layer + 1])
    u = torch.randn(1, k, HIDDEN, generator=torch.Generator().manual_seed(PROBE_SEED))[0].double()
    want = _gain_by_hand(layer_input[-1], u, states, SEQ)
    with gs.open_run(tmp_path / "run") as run:
        got = run.series(TIME_GAIN_STAT, "module")["rnn"]
        steps = run.series(TIME_STEPS_STAT, "module")["rnn"]
        assert TIME_GAIN_REVERSE_STAT not in run.stats("module")
    assert math.isclose(float(got.iloc[0]), want, rel_tol=1e-5)
    assert float(steps.iloc[0]) == SEQ
    assert 0.2 < want < 1  # (a healthy default-initialized LSTM shrinks it at every step)


def test_time_gain_of_each_direction_of_a_bidirectional_gru(tmp_path):
    """Forward: from the last step's output back to h_0; reverse: from the first step's output back
    to the reverse direction's initial state (the GRU run by hand over the flipped sequence)."""
    torch.manual_seed(2)
    model = LSTMLanguageModel(nn.GRU(EMBED, HIDDEN, bidirectional=True, batch_first=True))
    tokens, targets = batch(1, batch_first=True)
    x = _record_one_step(model, tokens, targets, tmp_path / "run")
    k = min(PROBE_SAMPLES, BATCH)
    x = x[:k].double().transpose(0, 1)  # (T, k, F)
    u = torch.randn(2, k, HIDDEN, generator=torch.Generator().manual_seed(PROBE_SEED)).double()
    want = {}
    for stat, suffix, seq in ((TIME_GAIN_STAT, "", x), (TIME_GAIN_REVERSE_STAT, "_reverse", x.flip(0))):
        weights = [getattr(model.rnn, f"{w}_l0{suffix}") for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h0 = torch.zeros(k, HIDDEN, dtype=torch.float64, requires_grad=True)
        out = _gru_by_hand(seq, weights, h0)
        want[stat] = _gain_by_hand(out[-1], u[1 if suffix else 0], [h0], SEQ)
    with gs.open_run(tmp_path / "run") as run:
        for stat, value in want.items():
            assert math.isclose(float(run.series(stat, "module")["rnn"].iloc[0]), value, rel_tol=1e-5), stat


def test_time_gain_probe_leaves_the_random_stream_and_the_gradients_alone(tmp_path):
    """With dropout between stacked layers the probe draws dropout masks; the training does not see it."""
    torch.manual_seed(3)
    model = LSTMLanguageModel(nn.LSTM(EMBED, HIDDEN, num_layers=2, dropout=0.5))
    twin = copy.deepcopy(model)
    tokens, targets = batch(0)
    torch.manual_seed(7)
    lm_loss(twin, tokens, targets).backward()
    after_twin = torch.rand(3)
    torch.manual_seed(7)
    with gs.watch(model, tmp_path / "run", through_time=True) as mon:
        lm_loss(model, tokens, targets).backward()
        mon.step()
    assert torch.equal(torch.rand(3), after_twin)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_time_gain_probe_runs_outside_autocast():
    """Under bf16 autocast (a forward in mixed precision) the probe still measures in the weights'
    float32: bf16 would be off by ~1e-2, and fp16 would flush a gradient crossing many steps to 0."""
    torch.manual_seed(4)
    rnn = nn.LSTM(EMBED, HIDDEN, num_layers=2)
    x = torch.randn(SEQ, BATCH, EMBED)
    plain, steps = time_gains(rnn, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = time_gains(rnn, x)
    assert steps == SEQ and mixed.dtype == torch.float32
    assert math.isclose(float(mixed[0]), float(plain[0]), rel_tol=1e-6)


def test_a_packed_sequence_is_said_once_and_not_measured(tmp_path):
    torch.manual_seed(0)
    rnn, head = nn.LSTM(3, 5), nn.Linear(5, 2)
    model = nn.ModuleDict({"rnn": rnn, "head": head})
    lengths = torch.tensor([6, 4, 2])
    with pytest.warns(UserWarning, match="'rnn' takes a PackedSequence") as said:
        with gs.watch(model, tmp_path / "run", through_time=True) as mon:
            for _ in range(3):
                packed = nn.utils.rnn.pack_padded_sequence(torch.randn(6, 3, 3), lengths, enforce_sorted=False)
                out, _ = nn.utils.rnn.pad_packed_sequence(rnn(packed)[0])
                head(out[-1]).sum().backward()
                mon.step()
    assert sum("PackedSequence" in str(w.message) for w in said) == 1  # once, not at every step
    with gs.open_run(tmp_path / "run") as run:
        assert not [s for s in run.stats("module") if s.startswith(("time_", "out_grad_norm_t"))]
        assert "grad_norm" in run.stats("layer")  # the rest recorded as usual
