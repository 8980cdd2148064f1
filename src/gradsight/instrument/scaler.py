"""Reading a ``torch.amp.GradScaler``'s current loss scale."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class LossScale:
    """The loss scale of a GradScaler, and whether the gradients still carry it.

    Args:
        scaler: an enabled ``torch.amp.GradScaler`` (or None: no loss scaling; see
            ``watch_options``, which takes a disabled one as None).
        optimizers: the optimizers whose unscale state counts (empty: any).
    """

    def __init__(self, scaler: Any | None, optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
        self.scaler = scaler
        self.optimizers = tuple(optimizers)
        self._warned_mixed = False

    def factors(self, device: torch.device) -> tuple[Tensor | None, Tensor | None]:
        """``(1/scale to apply to the gradients, scale to record)``, 0-d float32 on ``device``.

        ``(None, None)`` without a scaler or before ``scaler.scale()`` was
        first called; ``(None, scale)`` when the optimizer's gradients were already
        unscaled (``scaler.unscale_(optimizer)``).
        """
        scaler = self.scaler
        if scaler is None:
            return None, None
        scale = getattr(scaler, "_scale", None)
        if scale is None:  # scaler.scale() never called yet
            return None, None
        scale = scale.to(device).float()
        if self.already_unscaled():
            return None, scale
        return scale.reciprocal(), scale

    def already_unscaled(self) -> bool:
        """Whether ``scaler.unscale_`` ran since their last step: for any optimizer (none
        given), or for every one given (some but not all: a warning, once; taken as not)."""
        states = getattr(self.scaler, "_per_optimizer_states", {})
        if not self.optimizers:
            return any(_unscaled(state) for state in states.values())
        unscaled = [_unscaled(states[id(o)]) if id(o) in states else False for o in self.optimizers]
        if any(unscaled) and not all(unscaled) and not self._warned_mixed:
            self._warned_mixed = True
            warnings.warn("gradsight: scaler.unscale_() was called for some of the optimizers passed to gs.watch "
                          "but not for the others before monitor.step(); their gradients are all taken as still "
                          "scaled (divided by the loss scale); call monitor.step() before every unscale_() or "
                          "after all of them", stacklevel=2)
        return all(unscaled)


def _unscaled(state: dict) -> bool:
    return getattr(state.get("stage"), "name", None) == "UNSCALED"
