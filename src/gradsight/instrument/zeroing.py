"""Whether the gradients were cleared between two optimizer steps (a forgotten ``zero_grad()``).

A backward pass adds into ``.grad``: without ``optimizer.zero_grad()`` (or ``model.zero_grad()``)
once per optimizer step, every step applies the sum of all the gradients so far. Told exactly
on one parameter (the smallest that has a gradient, one that an optimizer passed to ``gs.watch``
steps where there is one) by a hook that runs before each backward pass accumulates into it,
kept when a second hook sees that the pass did accumulate (``torch.autograd.grad``, which a
gradient penalty or a reference computation calls, does not):

- the pass is judged only when an optimizer step ran since the last ``monitor.step()``: one
  of an optimizer that holds the parameter (a global step hook: also an optimizer not passed
  to ``gs.watch``), or any in-place change of the parameter (its version counter: a
  hand-written update; fused optimizers leave the counter alone); a micro-batch of gradient
  accumulation is not;
- ``.grad`` set to None, replaced by another tensor, or all zero at any pass before the next
  ``monitor.step()`` means it was cleared (``zero_grad()``, ``set_to_none`` or not; a GAN's
  discriminator cleared before its own pass after the generator's went through it);
- the very tensor of the last ``monitor.step()``, not all zero, at every pass: not cleared.

The verdict is the model-level series ``grad_not_zeroed`` (1: not cleared, 0: cleared) at the
recorded steps that were judged, nothing at the others; the "all zero" test stays on the
device until the step's one host transfer. Costs nothing where ``.grad`` is set to None
(``zero_grad()``'s default): a host-side check of one parameter per backward pass.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook

from gradsight.instrument.activations import _graph_task, _under_transform
from gradsight.instrument.distributed import local_shard
from gradsight.instrument.hooks import HookRegistry
from gradsight.store.schema import Level

#: The model-level statistic: 1.0 where a recorded step's gradient was added to the previous step's.
STAT = "grad_not_zeroed"
KEY = (Level.MODEL, "", STAT)


class ZeroingCheck:
    """Watches one parameter's ``.grad`` across optimizer steps (see the module docstring)."""

    TAG = "zeroing"

    def __init__(self, hooks: HookRegistry, optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
        self._hooks = hooks
        #: ids of the parameters the optimizers passed to gs.watch step (the ones to watch, where any has a gradient)
        self._preferred = {id(p) for o in optimizers for g in o.param_groups for p in g["params"]}
        self._param: weakref.ref | None = None
        self._version = -1  #: the parameter's version counter at the last step() call
        self._grad: weakref.ref | None = None  #: its .grad at the last step() call
        #: what the running pass found before accumulating (graph task, stepped, cleared, nonzero):
        #: kept only if the pass accumulates (torch.autograd.grad runs the first hook, not the second)
        self._seen: tuple[int, bool, bool, Tensor | None] | None = None
        self._optimizer_stepped = False  #: an optimizer holding the parameter stepped since the last step() call
        #: optimizer -> (how many parameters its groups held, whether the watched one is among them)
        self._holds: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._passes = 0  #: passes that accumulated into the parameter since the last step() call
        self._stepped = False  #: an optimizer step ran before the first of them
        self._cleared = False  #: one of them found .grad None, replaced or (on the host) zero
        self._nonzero: Tensor | None = None  #: every pass that found the same tensor found it nonzero (on its device)
        self._warned = False
        self._zeros: dict[torch.device, Tensor] = {}

    @property
    def hooked(self) -> bool:
        """Whether a parameter is watched (:meth:`choose` found one)."""
        return self._param is not None

    def choose(self, params: Sequence[Tensor]) -> None:
        """At the first recorded step: hook the smallest parameter with a gradient (among those
        an optimizer passed to gs.watch steps, where any has one)."""
        if self.hooked:
            return
        stepped = [p for p in params if id(p) in self._preferred] or list(params)
        leaves = [p for p in stepped if p.is_leaf and p.grad is not None]
        if not leaves:
            return
        p = min(leaves, key=lambda t: t.numel())
        try:
            after = p.register_post_accumulate_grad_hook(self._accumulated)
        except RuntimeError:  # a parameter that cannot take a hook: nothing is judged
            return
        self._hooks.add(after, self.TAG)
        self._hooks.add(p.register_hook(self._before), self.TAG)
        self._hooks.add(register_optimizer_step_post_hook(self._optimizer_step), self.TAG)
        self._param = weakref.ref(p)

    def _optimizer_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        """After any optimizer's step: note it when that optimizer holds the parameter."""
        p = self._param() if self._param is not None else None
        if p is None or self._optimizer_stepped:
            return None
        groups = optimizer.param_groups
        count = sum(len(g["params"]) for g in groups)
        known = self._holds.get(optimizer)
        if known is None or known[0] != count:  # (groups added since: asked again)
            known = (count, any(q is p for g in groups for q in g["params"]))
            self._holds[optimizer] = known
        self._optimizer_stepped = known[1]
        return None

    def _before(self, grad: Tensor) -> None:
        """Before a pass adds into the parameter's ``.grad`` (or hands ``torch.autograd.grad`` its gradient)."""
        p = self._param() if self._param is not None else None
        if p is None or _under_transform():
            return None
        g = p.grad
        cleared = g is None or self._grad is None or self._grad() is not g
        nonzero = None
        if not cleared and not self._cleared:
            local = local_shard(g)
            nonzero = (local._values() if local.is_sparse else local).ne(0).any()
        self._seen = (_graph_task(), self._optimizer_stepped or p._version != self._version, cleared, nonzero)
        return None

    def _accumulated(self, p: Tensor) -> None:
        """After a pass accumulated into ``.grad``: it counts."""
        seen, self._seen = self._seen, None
        if seen is None or seen[0] != _graph_task() or _under_transform():
            return
        _, stepped, cleared, nonzero = seen
        self._passes += 1
        if self._passes == 1:
            self._stepped = stepped
        if cleared:
            self._cleared = True
        elif nonzero is not None:
            self._nonzero = nonzero if self._nonzero is None else self._nonzero & nonzero

    def collect(self) -> tuple[list[tuple[str, str, str]], Tensor | None]:
        """At a recorded step, before its transfer: ``([KEY], 1-element float tensor)`` when the
        passes since the last step() call were judged, else ``([], None)``."""
        p = self._param() if self._param is not None else None
        if p is None or not self._stepped or not self._passes:
            return [], None
        if self._cleared or self._nonzero is None:  # (a zero made once per device, where the transfer gathers)
            zero = self._zeros.get(p.device)
            if zero is None:
                zero = self._zeros[p.device] = torch.zeros(1, device=p.device)
            return [KEY], zero
        return [KEY], self._nonzero.float().reshape(1)

    def after(self, value: float | None, step: int) -> None:
        """After the transfer: warn once where this step's gradient was not cleared."""
        if value is None or value != 1.0 or self._warned:
            return
        self._warned = True
        warnings.warn(f"gradsight: at step {step} the backward pass added into the gradients of the step before "
                      "(still in .grad after the optimizer stepped): the gradients are not zeroed between steps, so "
                      "each step applies the sum of all gradients so far; call optimizer.zero_grad() once per "
                      "optimizer step", stacklevel=5)

    def arm(self) -> None:
        """At every step() call, after recording: the parameter's state the next passes compare with."""
        p = self._param() if self._param is not None else None
        self._passes, self._stepped, self._cleared, self._nonzero, self._seen = 0, False, False, None, None
        self._optimizer_stepped = False
        if p is None:
            return
        self._version = p._version
        self._grad = weakref.ref(p.grad) if p.grad is not None else None
