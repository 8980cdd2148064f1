"""The gradient noise scale of a recorded step (``gs.watch(..., noise_scale=True)``), per layer and for the model.

Two batch sizes that training already has, without copying a gradient:

- the **micro-batches**: a tensor hook on each watched parameter (``param.register_hook``)
  sees the gradient one backward pass brings before autograd adds it into ``.grad``; the
  hook takes its norm (one reduction, written into a buffer made at watch: the hook
  allocates nothing) and counts the call;
- the **step's batch**: ``.grad`` at ``monitor.step()``, the sum of those gradients (and,
  under DDP, their average over the ranks), whose squared norms the monitor takes anyway.

With ``k`` micro-batches on each of ``n`` ranks (``m = n k`` in all; DDP without
accumulation has ``k = 1``, ``m = n``), micro-batch ``j``'s gradient is taken as ``k h_j``
(``h_j`` what the hook saw): the micro-batch gradients then average to ``.grad`` whether
the loss was divided by ``k`` or not. Under DDP each rank sums its micro-batches' squared
norms per layer and the ranks add them with one ``all_reduce`` of ``layers + 1`` numbers.
The estimates (:func:`gradsight.stats.noise_scale.unbiased`) and their moving averages
are per layer and for the model; see docs/noise-scale.md.

The micro-batch count of a step is the largest number of hook calls of one parameter
since the previous ``step()`` call (a parameter unused by some micro-batch is counted
with a zero gradient there). Calls that do not reach ``.grad`` are not counted:
``torch.autograd.grad`` (a gradient penalty, a reference computed by the user's code) and
backward passes with ``inputs=`` that leave the parameter out. With one micro-batch and one process there is only one
batch size: one warning says so and nothing is recorded.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from gradsight.instrument.hooks import HookRegistry
from gradsight.instrument.rows import StepRows
from gradsight.stats.noise_scale import EMA_BETA, ema_update, unbiased
from gradsight.store.schema import Level

log = logging.getLogger(__name__)

#: ``node -> bool``: whether the running backward pass executes ``node``; raises inside
#: ``torch.autograd.grad`` (whose results never reach ``.grad``). None where torch lacks it.
_WILL_RUN = getattr(torch._C, "_will_engine_execute_node", None)

#: The statistics of each layer and of the model (``gns_batch``: the model only).
NOISE_STATS = ("gns_grad_sq", "gns_trace", "gns")
BATCH_STAT = "gns_batch"

NEEDS_TWO = ("gradsight: noise_scale needs two batch sizes: gradient accumulation (several backward passes "
             "before monitor.step()) or several processes under DDP; this step had one micro-batch on one "
             "process, so no noise scale is recorded")
NO_BACKWARD = ("gradsight: noise_scale saw no backward pass reach the watched parameters before monitor.step() "
               "(gradients assigned without autograd?); no noise scale is recorded for such steps")
#: The micro-batches per step the norm buffers hold at first (doubled when a step has more).
INITIAL_CALLS = 8

SHARDED = ("gradsight: noise_scale is not measured under FSDP (sharded parameters): the micro-batch gradients "
           "of a shard are not seen; nothing is recorded")


class NoiseScale:
    """Hooks that measure each micro-batch's gradient, and the noise scale of a recorded step.

    Args:
        params: the watched parameters (inventory order); those that require a gradient
            now get a hook.
        param_layer: the layer index of each.
        layer_names: the layer names.
        hooks: the registry that owns the hook handles (tag ``"noise_scale"``).
        all_sum: ``tensor -> tensor`` summed over the ranks (one process: itself).
        distributed: whether several processes share the step (DDP).
        micro_batch_size: the samples of one micro-batch on one rank, or None (the noise
            scale is then in micro-batches).
        is_active: whether the coming ``step()`` call is recorded (the hooks of other
            steps only count).
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        param_layer: np.ndarray,
        layer_names: Sequence[str],
        hooks: HookRegistry,
        all_sum: Callable[[Tensor], Tensor],
        distributed: bool,
        micro_batch_size: int | None,
        is_active: Callable[[], bool],
    ) -> None:
        self._param_layer = np.asarray(param_layer, dtype=np.int64)
        self._layer_names = list(layer_names)
        self._all_sum = all_sum
        self._distributed = distributed
        self.micro_batch_size = micro_batch_size
        self._is_active = is_active
        self._active: bool | None = None  #: is_active() of the coming step() call, asked at its first hook call
        self._calls = [0] * len(params)
        self._seen = False  #: a hook counted a call since the last reset
        self._written = 0  #: columns of the norm buffers written since the last reset (the most calls of one parameter)
        self._ema: Tensor | None = None  #: [2, layers + 1]: the averages of |G|² and tr(Σ); the model last
        self._warned: set[str] = set()
        self._hooked = np.array([p.requires_grad for p in params], dtype=bool)  #: (frozen at watch: no hook)
        self._params = list(params)
        self._layer_index: dict[torch.device, Tensor] = {}
        self._capacity = INITIAL_CALLS
        self._allocate()
        for i, p in enumerate(params):
            if p.requires_grad:
                hooks.add(p.register_hook(self._hook(i, p)), "noise_scale")

    def _allocate(self) -> None:
        """The norm buffers: one ``[parameters, capacity]`` tensor per device and norm dtype of the
        hooked parameters, made here rather than in the hooks (small tensors allocated during the
        backward pass and kept until ``step()`` fragment the heap between the gradients' blocks:
        measured, thousands of page faults a step on the MLP of 12 Linear(1024, 1024)). Each
        parameter's row is a view (``self._rows[i]``); the norms already written are kept."""
        old = getattr(self, "_rows", None)
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(self._params):
            if self._hooked[i]:
                groups.setdefault((p.device, _norm_dtype(p.dtype)), []).append(i)
        self._buffers: list[tuple[Tensor, np.ndarray]] = []
        self._rows: list[Tensor | None] = [None] * len(self._params)
        for (device, dtype), members in groups.items():
            buffer = torch.zeros((len(members), self._capacity), dtype=dtype, device=device)
            self._buffers.append((buffer, np.asarray(members, dtype=np.int64)))
            for row, i in enumerate(members):
                self._rows[i] = buffer[row]
                if old is not None and old[i] is not None:
                    buffer[row, :old[i].numel()] = old[i].to(device, dtype)

    def _hook(self, i: int, param: Tensor) -> Callable[[Tensor], None]:
        with torch.enable_grad():  # the parameter's AccumulateGrad node (what adds into .grad)
            accumulator = param.view_as(param).grad_fn.next_functions[0][0]

        def hook(grad: Tensor) -> None:
            if _WILL_RUN is not None:
                try:
                    if not _WILL_RUN(accumulator):  # a backward pass that does not reach .grad
                        return
                except RuntimeError:  # torch.autograd.grad(): nothing reaches .grad
                    return
            j = self._calls[i]
            self._calls[i] = j + 1
            self._seen = True
            if self._active is None:
                self._active = self._is_active()
            if self._active:
                if j >= self._capacity:
                    self._capacity = max(2 * self._capacity, j + 1)
                    self._allocate()
                row = self._rows[i]
                if row.dtype != _norm_dtype(grad.dtype) or row.device != grad.device:  # the model moved
                    self._allocate()
                    row = self._rows[i]
                with torch.no_grad():
                    wide = torch.float32 if grad.dtype in (torch.float16, torch.bfloat16) else None
                    torch.linalg.vector_norm(grad, dtype=wide, out=row[j])
                self._written = max(self._written, j + 1)

        return hook

    def reset(self) -> None:
        """Forget the micro-batches seen since the last ``step()`` call (called at every one)."""
        self._active = None
        if self._seen:
            self._calls = [0] * len(self._calls)
            self._seen = False
        if self._written:
            with torch.no_grad():
                for buffer, _ in self._buffers:
                    buffer[:, :self._written].zero_()
            self._written = 0

    def _say_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, stacklevel=5)

    def measure(self, rows: StepRows, big_sumsq: Tensor, inv_scale: Tensor | None,
                scale: Tensor | None) -> tuple[list[tuple[str, str, str]], Tensor | None]:
        """The noise scale statistics of a recorded step.

        Args:
            rows: the step's rows (the parameters with a gradient, their layers).
            big_sumsq: ``[len(rows.present)]`` squared norms of their ``.grad``.
            inv_scale: 1 / the loss scale when ``.grad`` still carries it, else None.
            scale: the loss scale the backward passes carried (None: no loss scaling).

        Returns:
            ``(keys, values)``: ``(level, name, stat)`` of each value (layers and model),
            and the float32 values on ``big_sumsq``'s device; ``([], None)`` when the step
            had fewer than two micro-batches in all.
        """
        k = max(self._calls, default=0)
        if k == 0 or not self._written:
            self._say_once(NO_BACKWARD)
            return [], None
        if k == 1 and not self._distributed:
            self._say_once(NEEDS_TWO)
            return [], None
        hooked = np.flatnonzero(self._hooked[rows.present])
        if len(hooked) == 0:
            return [], None
        if len(hooked) < len(rows.present):  # parameters unfrozen after watch: their micro-batches are not seen
            rows, big_sumsq = rows.subset(hooked.tolist()), big_sumsq[torch.as_tensor(hooked, device=big_sumsq.device)]
        device = big_sumsq.device
        n_layers = len(self._layer_names)
        with torch.no_grad():
            squares = torch.zeros(len(self._params), dtype=torch.float64, device=device)  # per parameter
            for buffer, members in self._buffers:
                part = buffer[:, :self._written].to(device).double().square().sum(1)
                every = len(members) == len(self._params)  # (one device and dtype, nothing frozen)
                squares[slice(None) if every else torch.as_tensor(members, device=device)] = part
            small = torch.zeros(n_layers + 1, dtype=torch.float64, device=device)
            small.index_add_(0, self._layer_of(device), squares * k * k)  # micro-batch j's gradient is k h_j
            small[n_layers] = k
            small = self._all_sum(small)  # [sum over ranks and micro-batches of |k h|² per layer, m]
            m = small[n_layers]
            if scale is not None:  # the hooks saw the gradients times the loss scale
                small = small / scale.to(device).double().square()
            big = rows.stack(big_sumsq.to(device).double())[rows.layer_rows.start:]
            if inv_scale is not None:
                big = big * inv_scale.to(device).double().square()
            at = torch.as_tensor(rows.layers, dtype=torch.long, device=device)
            small_rows = torch.cat([small[at], small[at].sum(0, keepdim=True)]) / m
            grad_sq, trace = unbiased(small_rows, big, m, float(self.micro_batch_size or 1))
            if self._ema is None:
                self._ema = torch.zeros((2, n_layers + 1), dtype=torch.float64, device=device)
            slots = torch.cat([at, at.new_tensor([n_layers])])
            ema = self._ema[:, slots]
            ema_update(ema, torch.stack([grad_sq, trace]), EMA_BETA)
            self._ema[:, slots] = ema
            gns = ema[1] / ema[0]
            batch = m * float(self.micro_batch_size or 1)
            values = torch.cat([torch.stack([grad_sq, trace, gns], 1).reshape(-1), batch.reshape(1)]).float()
        names = [(Level.LAYER, self._layer_names[j]) for j in rows.layers] + [(Level.MODEL, "")]
        keys = [(level, name, stat) for level, name in names for stat in NOISE_STATS]
        keys.append((Level.MODEL, "", BATCH_STAT))
        return keys, values


    def _layer_of(self, device: torch.device) -> Tensor:
        """``[parameters]`` int64: each parameter's layer, on ``device`` (made once)."""
        index = self._layer_index.get(device)
        if index is None:
            index = self._layer_index[device] = torch.as_tensor(self._param_layer, device=device)
        return index


def _norm_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a gradient's norm as the hooks take it: float64 for float64 and complex128, else float32."""
    return torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32


def warn_sharded() -> None:
    """Say that FSDP-sharded runs get no noise scale."""
    log.warning(SHARDED)


__all__ = ["BATCH_STAT", "NOISE_STATS", "NoiseScale", "warn_sharded"]
