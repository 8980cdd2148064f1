"""Recurrent layers: stacked layers, per-gate gradient norms, gradient through time.

``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` hold one layer per stacked layer and direction
(:func:`stacked_layer`: ``rnn.l0``, ``rnn.l1``, ``rnn.l0_reverse``); their cells
(``nn.LSTMCell`` ...) are one layer each. Both are ``weighted`` (:mod:`gradsight.store.roles`).

Gates: the rows of ``weight_ih``, ``weight_hh``, ``bias_ih`` and ``bias_hh`` are the gates'
in PyTorch's order, one chunk of ``hidden_size`` rows each: LSTM ``i, f, g, o`` (input,
forget, cell, output), GRU ``r, z, n`` (reset, update, new). :class:`GateNorms` records the
gradient norm of each gate over those four tensors as the ``layer`` statistic
``grad_norm_gate_<gate>`` (:func:`gate_stat`).

Through time (``gs.watch(..., through_time=True)``): :class:`ThroughTime` hooks the output
sequence of each ``nn.RNNBase`` (``output[0]``, the last stacked layer's hidden states
``h_t``) and records ``‖∂L/∂h_t‖`` per time step ``t`` as the ``module`` statistic
``out_grad_norm_t<t>`` (:func:`time_stat`) of the module. That is the gradient the rest of
the model sends to each step's output (the loss's direct term at step ``t`` in a language
model; nothing but the last step in a classifier reading it, nothing at all in one reading
``h_n``): what flows back *through time* stays inside the fused recurrent kernel. So at each
recorded step it also runs a probe (:func:`time_gains`): on a few samples of the step's
input, the gradient of a fixed random projection of the last step's output with respect to
the initial state, over the projection's norm, taken to the ``1/T``: the per-step gain of
the gradient through the ``T`` steps of the sequence, whatever reads the outputs (module
statistics ``time_grad_gain``, ``time_grad_gain_reverse`` for the reverse direction,
``time_steps``). Bengio et al. 1994, Pascanu et al. 2013: it shrinks or grows geometrically
with the norm of the recurrent Jacobian.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Collection, Sequence
from functools import partial

import torch
from torch import Tensor, nn

from gradsight.stats.grad import sumsq_fp32
from gradsight.store.schema import Level

#: A parameter of ``nn.RNNBase`` that belongs to a stacked layer: ``weight_ih_l0``, ``bias_hh_l1_reverse``.
_STACKED = re.compile(r"^(?:weight|bias)_(?:ih|hh|hr)_(l\d+(?:_reverse)?)$")
#: The last part of a stacked layer's name: ``l0``, ``l1_reverse``.
_STACKED_NAME = re.compile(r"^l\d+(?:_reverse)?$")
#: A parameter whose rows are gates: ``weight_ih``, ``bias_hh_l0``, ... (not the projection ``weight_hr``).
_GATED = re.compile(r"^(?:weight|bias)_(?:ih|hh)(?:_l\d+(?:_reverse)?)?$")

LSTM_GATES = ("input", "forget", "cell", "output")
GRU_GATES = ("reset", "update", "new")
#: Prefix of the per-gate statistic (level ``layer``).
GATE_STAT_PREFIX = "grad_norm_gate_"
#: Prefix of the through-time statistic (level ``module``).
TIME_STAT_PREFIX = "out_grad_norm_t"
_TIME_STAT = re.compile(rf"^{TIME_STAT_PREFIX}(\d+)$")
#: The through-time probe's statistics (level ``module``): the per-step gain of the gradient
#: through time, forward and reverse direction, and the sequence length it spans.
TIME_GAIN_STAT = "time_grad_gain"
TIME_GAIN_REVERSE_STAT = "time_grad_gain_reverse"
TIME_STEPS_STAT = "time_steps"
#: The probe runs on this many samples of the batch (its cost: a forward and a backward pass of
#: the recurrent module on them) ...
PROBE_SAMPLES = 4
#: ... and projects the last step's output on N(0, 1) directions drawn with this seed.
PROBE_SEED = 0


def stacked_layer(param_leaf: str) -> str | None:
    """The stacked layer (and direction) of a recurrent module's parameter:
    ``'weight_ih_l1' -> 'l1'``, ``'bias_hh_l0_reverse' -> 'l0_reverse'``; None for others."""
    m = _STACKED.match(param_leaf)
    return m.group(1) if m else None


def module_of_stacked_layer(layer: str, modules: Collection[str]) -> str | None:
    """The recurrent module whose stacked layer ``layer`` is (``'rnn.l0' -> 'rnn'``, given the
    model's module names ``modules``); None for a layer that is a module itself, or any other."""
    parent, _, last = layer.rpartition(".")
    if layer in modules or parent not in modules or not _STACKED_NAME.match(last):
        return None
    return parent


def gate_names(module: nn.Module) -> tuple[str, ...]:
    """The gates of a recurrent module in PyTorch's row order (none for ``nn.RNN``, one tanh)."""
    if isinstance(module, (nn.LSTM, nn.LSTMCell)):
        return LSTM_GATES
    if isinstance(module, (nn.GRU, nn.GRUCell)):
        return GRU_GATES
    return ()


def gate_stat(gate: str) -> str:
    """``'forget' -> 'grad_norm_gate_forget'``."""
    return GATE_STAT_PREFIX + gate


def time_stat(t: int) -> str:
    """``3 -> 'out_grad_norm_t3'``."""
    return f"{TIME_STAT_PREFIX}{t}"


def time_index(stat: str) -> int | None:
    """``'out_grad_norm_t3' -> 3``; None for any other statistic."""
    m = _TIME_STAT.match(stat)
    return int(m.group(1)) if m else None


class GateNorms:
    """The gradient norm of each gate of each recurrent layer.

    Args:
        model: the model.
        params: ``(name, layer)`` of every parameter, in the monitor's row order.
    """

    def __init__(self, model: nn.Module, params: Sequence[tuple[str, str]]) -> None:
        #: (parameter index, layer, number of gates)
        self._entries: list[tuple[int, str, int]] = []
        self._gates: dict[str, tuple[str, ...]] = {}
        for i, (name, layer) in enumerate(params):
            module_name, _, leaf = name.rpartition(".")
            gates = gate_names(model.get_submodule(module_name)) if _GATED.match(leaf) else ()
            if gates:
                self._entries.append((i, layer, len(gates)))
                self._gates[layer] = gates

    def __bool__(self) -> bool:
        return bool(self._entries)

    def measure(self, grads: Sequence[Tensor | None], inv_scale: Tensor | None
                ) -> tuple[list[tuple[str, str, str]], Tensor | None]:
        """``(level, name, stat)`` keys and their values (float32 on the gradients' device): the
        norm of each gate's rows over a layer's gated tensors that have a gradient.

        Args:
            grads: the ``.grad`` of every parameter (None: no gradient), in row order.
            inv_scale: the loss scale's reciprocal (mixed precision), or None.
        """
        chunks: list[Tensor] = []
        slots: list[int] = []
        keys: list[tuple[str, str, str]] = []
        slot_of: dict[tuple[str, int], int] = {}
        for i, layer, n_gates in self._entries:
            g = grads[i]
            if g is None or g.is_sparse or g.shape[0] % n_gates:
                continue
            for k, chunk in enumerate(g.detach().chunk(n_gates, 0)):
                slot = slot_of.get((layer, k))
                if slot is None:
                    slot = slot_of[(layer, k)] = len(keys)
                    keys.append((Level.LAYER, layer, gate_stat(self._gates[layer][k])))
                chunks.append(chunk)
                slots.append(slot)
        if not keys:
            return [], None
        sumsq = sumsq_fp32(chunks)
        per_gate = torch.zeros(len(keys), dtype=torch.float32, device=sumsq.device)
        per_gate.index_add_(0, torch.tensor(slots, device=sumsq.device), sumsq)
        norms = per_gate.sqrt()
        return keys, norms if inv_scale is None else norms * inv_scale.float()


def probe_directions(directions: int, samples: int, features: int) -> Tensor:
    """The fixed projections of :func:`time_gains`: N(0, 1), ``(directions, samples, features)``,
    drawn on the CPU with :data:`PROBE_SEED` (the same at every step, not from the global stream)."""
    gen = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randn(directions, samples, features, generator=gen)


def time_gains(module: nn.RNNBase, x: object, hx: object = None,
               samples: int = PROBE_SAMPLES) -> tuple[Tensor, int] | None:
    """The per-step gain of the gradient through time of a recurrent module at input ``x``.

    On the first ``samples`` samples, for each direction ``d``: ``L_d = Σ u_d · h_end``, a fixed
    random projection (:func:`probe_directions`) of the last stacked layer's output at the
    direction's last step (``t = T - 1`` forward, ``t = 0`` reverse); the gradient of ``L_d``
    with respect to the initial state of every stacked layer in that direction (``h_0``, and
    ``c_0`` for an LSTM: ``hx`` when given, else zeros) has passed through all ``T`` steps; its
    norm over ``‖u_d‖``, to the ``1/T``, is the gain per step. It is the same whether the loss
    reads every step's output or only the last state: the loss's direct terms never enter.
    The module's ``forward`` is called directly (its hooks do not run), outside autocast, in
    its weights' format; the global random stream is restored after it when the module has
    dropout between layers.

    Returns:
        ``(gains, T)``: a float32 tensor of one gain per direction (0 where nothing gets
        through), on the input's device; None for a ``PackedSequence`` or an empty sequence.
    """
    if not isinstance(x, Tensor) or x.dim() not in (2, 3):
        return None  # a PackedSequence: its steps differ per sample
    lstm = isinstance(module, nn.LSTM)
    if x.dim() == 2:  # unbatched: (T, features), states (layers x directions, hidden)
        x = x.unsqueeze(0 if module.batch_first else 1)
        if hx is not None:
            hx = tuple(h.unsqueeze(1) for h in hx) if lstm else hx.unsqueeze(1)
    batch_dim = 0 if module.batch_first else 1
    time_dim = 1 - batch_dim
    steps, k = x.shape[time_dim], min(samples, x.shape[batch_dim])
    if steps < 1 or k < 1:
        return None
    directions = 2 if module.bidirectional else 1
    out_size = module.proj_size or module.hidden_size
    # in the weights' format, outside autocast: a gradient that crosses T steps at 0.6 each is
    # 1e-14 of the projection after 64 steps, below fp16's range
    weight = next((p for p in module.parameters() if p.is_floating_point()), None)
    dtype = weight.dtype if weight is not None else x.dtype
    xp = x.detach().narrow(batch_dim, 0, k).to(dtype)
    if hx is None:
        shapes = [out_size, module.hidden_size] if lstm else [out_size]
        states = [xp.new_zeros(module.num_layers * directions, k, size) for size in shapes]
    else:
        states = [h.detach().narrow(1, 0, k).to(dtype) for h in (hx if lstm else (hx,))]
        states = [s.clone() for s in states]
    for s in states:
        s.requires_grad_(True)
    u = probe_directions(directions, k, out_size)
    dropout = module.dropout > 0 and module.training and module.num_layers > 1
    with torch.random.fork_rng(devices=[xp.device] if xp.is_cuda else [], enabled=dropout), torch.enable_grad(), \
            torch.autocast(xp.device.type, enabled=False):
        seq = module.forward(xp, tuple(states) if lstm else states[0])[0]
        gains = []
        for d in range(directions):
            end = seq.select(time_dim, steps - 1 if d == 0 else 0)[:, d * out_size:(d + 1) * out_size]
            ud = u[d].to(device=end.device, dtype=end.dtype)
            grads = torch.autograd.grad((end * ud).sum(), states, retain_graph=d + 1 < directions, allow_unused=True)
            sq = sum(g[d::directions].float().square().sum() for g in grads if g is not None)
            reached = torch.as_tensor(sq, dtype=torch.float32, device=xp.device).sqrt() / u[d].norm().item()
            gains.append(reached.pow(1.0 / steps))
    return torch.stack(gains), steps


class ThroughTime:
    """``‖∂L/∂h_t‖`` per time step of every ``nn.RNNBase``'s output sequence, and the gain of
    the gradient through time (:func:`time_gains`), on recorded steps.

    A forward hook on each recurrent module registers a tensor hook on its output sequence
    (``output[0]``; a ``PackedSequence`` is skipped); the hook adds the squared norm of the
    gradient at each time step (over the batch and the features, both directions of a
    bidirectional layer) on the device. Several calls or backward passes before ``step()``
    add up (a shorter sequence's missing steps count as zero). The first call of a module
    at a recorded step also runs :func:`time_gains` on its input.

    Args:
        model: the model.
        hooks: the registry that owns every handle.
        is_active: whether the current forward belongs to a recorded step.
    """

    TAG = "through-time"
    STEP_TAG = "through-time-step"

    def __init__(self, model: nn.Module, hooks, is_active: Callable[[], bool]) -> None:
        self._hooks = hooks
        self._is_active = is_active
        self._sumsq: dict[str, Tensor] = {}
        self._gains: dict[str, tuple[Tensor, int]] = {}
        self._packed_said: set[str] = set()
        for name, module in model.named_modules():
            if isinstance(module, nn.RNNBase):
                hooks.attach(module, "register_forward_hook", partial(self._forward, name), self.TAG,
                             with_kwargs=True)

    def _forward(self, name: str, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        if torch.compiler.is_compiling() or not self._is_active():
            return
        seq = output[0] if isinstance(output, tuple) else output
        if isinstance(seq, nn.utils.rnn.PackedSequence) and name not in self._packed_said:
            self._packed_said.add(name)
            warnings.warn(f"through_time=True: {name!r} takes a PackedSequence, whose time steps differ per sample: "
                          "neither the gradient at each time step nor the gain through time is measured for it "
                          "(pad the batch to measure them)", stacklevel=2)
        if not isinstance(seq, Tensor) or not seq.requires_grad:
            return
        if name not in self._gains and args:
            hx = args[1] if len(args) > 1 else kwargs.get("hx")
            gains = time_gains(module, args[0], hx)
            if gains is not None:
                self._gains[name] = gains
        time_dim = 1 if module.batch_first and seq.dim() == 3 else 0
        self._hooks.add(seq.register_hook(partial(self._backward, name, time_dim)), self.STEP_TAG)

    def _backward(self, name: str, time_dim: int, grad: Tensor) -> None:
        dims = tuple(d for d in range(grad.dim()) if d != time_dim)
        sq = torch.linalg.vector_norm(grad.detach(), dim=dims, dtype=torch.float32).square()
        before = self._sumsq.get(name)
        if before is not None:
            if len(before) < len(sq):
                before, sq = sq, before
            sq = before.index_add(0, torch.arange(len(sq), device=sq.device), sq)
        self._sumsq[name] = sq

    def collect(self, inv_scale: Tensor | None = None) -> tuple[list[tuple[str, str, str]], Tensor | None]:
        """The ``(level, name, stat)`` keys and values taken since the last call, and forget them
        (the gradient norms unscaled by ``inv_scale``; the gains are ratios, free of the loss scale)."""
        taken, self._sumsq = self._sumsq, {}
        gains, self._gains = self._gains, {}
        self._hooks.remove(self.STEP_TAG)
        keys = [(Level.MODULE, name, time_stat(t)) for name, sq in taken.items() for t in range(len(sq))]
        values = []
        if taken:
            norms = torch.cat([sq.sqrt() for sq in taken.values()])
            values.append(norms if inv_scale is None else norms * inv_scale.float())
        for name, (gain, steps) in gains.items():
            keys += [(Level.MODULE, name, stat) for stat in (TIME_GAIN_STAT, TIME_GAIN_REVERSE_STAT)[:len(gain)]]
            keys.append((Level.MODULE, name, TIME_STEPS_STAT))
            values.append(torch.cat([gain.float(), gain.new_tensor([float(steps)], dtype=torch.float32)]))
        if not keys:
            return [], None
        device = values[0].device
        return keys, torch.cat([v.to(device) for v in values])
