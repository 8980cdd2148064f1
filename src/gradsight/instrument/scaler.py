"""Reading a ``torch.amp.GradScaler``'s current loss scale."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class LossScale:
    """The loss scale of a GradScaler, and whether the gradients still carry it.

    Args:
        scaler: a ``torch.amp.GradScaler`` (or None: no loss scaling).
        optimizer: the optimizer whose unscale state counts (None: any).
    """

    def __init__(self, scaler: Any | None, optimizer: torch.optim.Optimizer | None) -> None:
        self.scaler = scaler
        self.optimizer = optimizer

    def factors(self, device: torch.device) -> tuple[Tensor | None, Tensor | None]:
        """``(1/scale to apply to the gradients, scale to record)``, 0-d float32 on ``device``.

        ``(None, None)`` without an enabled scaler or before ``scaler.scale()`` was
        first called; ``(None, scale)`` when the optimizer's gradients were already
        unscaled (``scaler.unscale_(optimizer)``).
        """
        scaler = self.scaler
        if scaler is None or not getattr(scaler, "is_enabled", lambda: True)():
            return None, None
        scale = getattr(scaler, "_scale", None)
        if scale is None:  # scaler.scale() never called yet
            return None, None
        scale = scale.to(device).float()
        if self.already_unscaled():
            return None, scale
        return scale.reciprocal(), scale

    def already_unscaled(self) -> bool:
        """Whether ``scaler.unscale_`` ran for the optimizer since its last step."""
        states = getattr(self.scaler, "_per_optimizer_states", {})
        for key, state in states.items():
            if self.optimizer is not None and key != id(self.optimizer):
                continue
            if getattr(state.get("stage"), "name", None) == "UNSCALED":
                return True
        return False
