"""What Adam and AdamW do with the gradient: their state per layer, at the steps that measure ``update_ratio``.

After the optimizer step of such a recorded step (a step post-hook), for every watched
parameter that a ``torch.optim.Adam`` or ``AdamW`` holds, from its state as it is (no copy
is kept: on the CPU one pass of the C kernel over ``exp_avg`` and ``exp_avg_sq`` for all of
them; elsewhere two temporaries the size of the parameter while its row is taken), with the bias
corrections of its step ``t``: ``v_hat = exp_avg_sq / (1 - beta2^t)`` (``max_exp_avg_sq``
with ``amsgrad``), ``m_hat = exp_avg / (1 - beta1^t)`` and the normalized update ``u =
m_hat / (sqrt(v_hat) + eps)``, the statistics (per parameter, layer and model, over all
their elements):

``adam_sqrt_v_rms``
    the RMS of ``sqrt(v_hat)``, ``sqrt(mean(v_hat))``: the gradient scale Adam divides by;
``adam_eps_frac``
    the fraction of elements where ``eps`` dominates, ``sqrt(v_hat) < eps``: there the
    update is less than half of Adam's ``m_hat / sqrt(v_hat)`` and shrinks with the gradient
    (Wortsman et al. 2023, the AdamW epsilon issue). Elements that never had a gradient
    (``v_hat = 0``: embedding rows of tokens not seen yet) move by weight decay only,
    whatever ``eps`` is, and are left out of the fraction (numerator and denominator);
``adam_update_rms``
    the RMS of ``u``, about 0.1-1 where the gradient's sign persists, far less where ``eps``
    dominates;
``adam_step_rms``
    the RMS of ``lr * u``, the step Adam takes (before weight decay), with the learning rate
    of the step just taken (read in the optimizer's step post-hook, before a learning-rate
    scheduler steps).

Works alike with ``foreach`` and ``fused`` Adam (the same state). Under FSDP2 each rank
takes its shards' sums and the ranks add them (``sum_rows``). Complex parameters are left
out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradsight.instrument.distributed import local_shard
from gradsight.instrument.rows import StepRows
from gradsight.instrument.series import SeriesIds
from gradsight.stats import native

#: The statistics, in the order of their rows' derived columns.
ADAM_STATS = ("adam_sqrt_v_rms", "adam_eps_frac", "adam_update_rms", "adam_step_rms")
_V_HAT, _EPS_COUNT, _U_SQ, _STEP_SQ, _NUMEL, _ACTIVE = range(6)

#: ``(step, series ids, values on the device)`` waiting for the next host transfer.
Pending = tuple[int, np.ndarray, Tensor]


def is_adam(optimizer: Any) -> bool:
    """Whether ``optimizer`` keeps Adam's state: ``torch.optim.Adam`` or ``AdamW``."""
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))


def _inputs(state: dict, group: dict) -> tuple | None:
    """``(m, v, bc1, bc2, eps, lr)`` of one parameter's Adam state (this rank's shard; ``bc1``,
    ``bc2`` and ``lr`` as float64 0-d tensors on the state's device or floats); None before
    its first step or for a complex parameter."""
    if "exp_avg" not in state or "step" not in state:
        return None
    beta1, beta2 = group["betas"]
    m = local_shard(state["exp_avg"])
    v = local_shard(state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"])
    if m.is_complex():
        return None
    step = state["step"]
    t = local_shard(step).to(v.device, torch.float64) if isinstance(step, Tensor) else torch.tensor(
        float(step), dtype=torch.float64, device=v.device)
    beta1 = beta1.to(v.device, torch.float64) if isinstance(beta1, Tensor) else float(beta1)
    beta2 = beta2.to(v.device, torch.float64) if isinstance(beta2, Tensor) else float(beta2)
    lr = group["lr"]
    lr = lr.to(v.device, torch.float64) if isinstance(lr, Tensor) else float(lr)
    return m, v, 1 - beta1 ** t, 1 - beta2 ** t, float(group["eps"]), lr


def adam_sums(state: dict, group: dict) -> Tensor | None:
    """``[6]`` float64 sums of one parameter's Adam state: ``sum(v_hat)``, the count of
    ``0 < sqrt(v_hat) < eps``, ``sum(u²)``, ``sum((lr u)²)``, the elements, the elements with
    ``v_hat > 0``; None before its first step (no state yet). PyTorch's kernels, two
    temporaries the size of the parameter (:func:`adam_sums_of` takes the C kernel where it can)."""
    inputs = _inputs(state, group)
    return None if inputs is None else _torch_sums(*inputs)


def _torch_sums(m: Tensor, v: Tensor, bc1: Tensor, bc2: Tensor, eps: float, lr: Tensor | float) -> Tensor:
    """:func:`adam_sums` of :func:`_inputs`, with PyTorch's kernels."""
    wide = torch.float64 if v.dtype == torch.float64 else torch.float32
    v_sum = v.sum(dtype=wide).double() / bc2
    eps_count = ((v > 0) & (v.to(wide) < (eps * eps) * bc2.to(wide))).sum().double()
    active = (v > 0).sum().double()
    denom = (v.to(wide) / bc2.to(wide)).sqrt_().add_(eps)
    u_sq = torch.linalg.vector_norm(m.to(wide).div(bc1.to(wide)).div_(denom), dtype=wide).double().square()
    numel = torch.tensor(float(v.numel()), dtype=torch.float64, device=v.device)
    return torch.stack([v_sum, eps_count, u_sq, u_sq * lr * lr, numel, active])


def _plain_inputs(state: dict, group: dict) -> tuple | None:
    """:func:`_inputs` as Python floats, for a state the C kernel takes (:func:`native.adam_takes`)
    whose step, betas and learning rate are numbers or CPU tensors; else None."""
    m, v = state.get("exp_avg"), state.get("max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq")
    step, lr, (beta1, beta2) = state.get("step"), group["lr"], group["betas"]
    if m is None or v is None or step is None or not native.adam_takes(m, v):
        return None
    if any(isinstance(x, Tensor) and (x.device.type != "cpu" or x.numel() != 1) for x in (step, lr, beta1, beta2)):
        return None
    t = float(step)
    return m, v, 1 - float(beta1) ** t, 1 - float(beta2) ** t, float(group["eps"]), float(lr)


def adam_sums_of(items: Sequence[tuple[dict, dict]]) -> list[Tensor | None]:
    """:func:`adam_sums` of several ``(state, group)`` pairs: the CPU states that
    :func:`native.adam_takes` in one call of the C kernel (one pass over ``m`` and ``v``, no
    temporary; the same sums within float32 rounding, tested), the others as :func:`adam_sums`."""
    out: list[Tensor | None] = [None] * len(items)
    taken: list[int] = []
    ms, vs, coefficients, scales = [], [], [], []
    native_ok = native.library() is not None
    for k, (state, group) in enumerate(items):
        plain = _plain_inputs(state, group) if native_ok else None
        if plain is not None:  # (Python floats: about 2 us a parameter, against 20 us for _inputs' tensors)
            m, v, bc1, bc2, eps, lr = plain
            taken.append(k)
            ms.append(m)
            vs.append(v)
            coefficients.append((bc1, bc2, eps))
            scales.append(lr * lr)
            continue
        inputs = _inputs(state, group)
        if inputs is not None:
            out[k] = _torch_sums(*inputs)
    if taken:
        sums = native.adam_sums(ms, vs, np.array(coefficients, dtype=np.float64))
        v_sum, eps_count, u_sq, active = sums.T
        rows = np.stack([v_sum / np.array([c[1] for c in coefficients]), eps_count, u_sq, u_sq * np.array(scales),
                         np.array([float(m.numel()) for m in ms]), active], axis=1)
        for k, row in zip(taken, torch.from_numpy(rows)):
            out[k] = row
    return out


def derive(sums: Tensor) -> Tensor:
    """``[R, 6]`` summed rows -> ``[R, 4]`` statistics (:data:`ADAM_STATS`)."""
    n = sums[:, _NUMEL]
    return torch.stack([(sums[:, _V_HAT] / n).sqrt(), sums[:, _EPS_COUNT] / sums[:, _ACTIVE], (sums[:, _U_SQ] / n).sqrt(),
                        (sums[:, _STEP_SQ] / n).sqrt()], 1)


class AdamState:
    """Reads the Adam state of the watched parameters after the optimizer step of an armed step.

    Args:
        watched: the watched parameters (inventory order).
        param_names, layer_names: their names and the layer names.
        series: the series ids of the run.
        sum_rows: ``(rows [P, ...], tensors) -> rows`` summed over the ranks that hold a
            counted shard of each tensor (one process, or DDP: the rows themselves).
        optimizers: the watched optimizers; the Adam and AdamW ones are read.
    """

    def __init__(self, watched: Sequence[Tensor], param_names: Sequence[str], layer_names: Sequence[str],
                 series: SeriesIds, sum_rows: Callable[[Tensor, Sequence[Tensor]], Tensor],
                 optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self._watched = list(watched)
        self._index = {id(p): i for i, p in enumerate(self._watched)}
        self._param_names = list(param_names)
        self._layer_names = list(layer_names)
        self._series = series
        self._sum_rows = sum_rows
        self.optimizers = [o for o in optimizers if is_adam(o)]
        self._step: int | None = None
        self._rows: StepRows | None = None
        self._waiting: set[int] = set()
        self._found: dict[int, Tensor] = {}  #: position in the step's rows -> its [6] sums
        self._pending: list[Pending] = []

    def __bool__(self) -> bool:
        return bool(self.optimizers)

    def arm(self, step: int, rows: StepRows) -> None:
        """Read the state after the next step of each Adam optimizer, for recorded ``step``
        (a step still waiting for some of its optimizers is finished first)."""
        self._finish()
        self._step, self._rows = step, rows
        self._waiting = set(range(len(self.optimizers)))
        self._found: dict[int, Tensor] = {}

    def measure(self, optimizer: Any = None, *hook_args: Any) -> None:
        """Optimizer step post-hook: the sums of the parameters ``optimizer`` holds, once per
        armed step; when every Adam optimizer has stepped, the statistics."""
        k = next((k for k, o in enumerate(self.optimizers) if o is optimizer), None)
        if self._step is None or k is None or k not in self._waiting:
            return
        self._waiting.discard(k)
        position = {i: p for p, i in enumerate(self._rows.present)}
        items, positions = [], []
        for group in optimizer.param_groups:
            for p in group["params"]:
                i = self._index.get(id(p))
                if i is None or i not in position or position[i] in self._found:
                    continue
                items.append((optimizer.state.get(p, {}), group))
                positions.append(position[i])
        with torch.no_grad():
            for at, sums in zip(positions, adam_sums_of(items)):
                if sums is not None:
                    self._found[at] = sums
        if not self._waiting:
            self._finish()

    def _finish(self) -> None:
        """The statistics of what the armed step's optimizers have measured (none: nothing)."""
        step, rows, found = self._step, self._rows, self._found
        self._step, self._found = None, {}
        if step is None or not found:
            return
        positions = sorted(found)
        with torch.no_grad():
            device = found[positions[0]].device
            sums = torch.stack([found[p].to(device) for p in positions])
            sums = self._sum_rows(sums, [self._watched[rows.present[p]] for p in positions])
            part = rows.subset(positions) if len(positions) < len(rows.present) else rows
            values = derive(part.stack(sums.to(part.device)))
        names = part.names(self._param_names, self._layer_names)
        ids = np.array([[self._series.id(level, name, stat) for stat in ADAM_STATS] for level, name in names],
                       dtype=np.int64)
        self._series.flush()
        self._pending.append((step, ids.reshape(-1), values.reshape(-1).float()))

    def take_pending(self) -> list[Pending]:
        """The measured statistics not yet written (a step still waiting for some of its
        optimizers is finished here); the caller writes them."""
        self._finish()
        pending, self._pending = self._pending, []
        return pending


__all__ = ["ADAM_STATS", "AdamState", "adam_sums", "adam_sums_of", "derive", "is_adam"]
