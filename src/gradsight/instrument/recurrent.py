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
``out_grad_norm_t<t>`` (:func:`time_stat`) of the module.
"""

from __future__ import annotations

import re
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


class ThroughTime:
    """``‖∂L/∂h_t‖`` per time step of every ``nn.RNNBase``'s output sequence, on recorded steps.

    A forward hook on each recurrent module registers a tensor hook on its output sequence
    (``output[0]``; a ``PackedSequence`` is skipped); the hook adds the squared norm of the
    gradient at each time step (over the batch and the features, both directions of a
    bidirectional layer) on the device. Several calls or backward passes before ``step()``
    add up (a shorter sequence's missing steps count as zero).

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
        for name, module in model.named_modules():
            if isinstance(module, nn.RNNBase):
                hooks.attach(module, "register_forward_hook", partial(self._forward, name), self.TAG)

    def _forward(self, name: str, module: nn.Module, args: tuple, output: object) -> None:
        if torch.compiler.is_compiling() or not self._is_active():
            return
        seq = output[0] if isinstance(output, tuple) else output
        if not isinstance(seq, Tensor) or not seq.requires_grad:
            return
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
        """The ``(level, name, stat)`` keys and values taken since the last call, and forget them."""
        taken, self._sumsq = self._sumsq, {}
        self._hooks.remove(self.STEP_TAG)
        keys = [(Level.MODULE, name, time_stat(t)) for name, sq in taken.items() for t in range(len(sq))]
        if not keys:
            return [], None
        norms = torch.cat([sq.sqrt() for sq in taken.values()])
        return keys, norms if inv_scale is None else norms * inv_scale.float()
