"""Helpers shared by the model-zoo tests."""

from __future__ import annotations

import torch

from gradsight.models import model_info


def is_vector_model(name: str) -> bool:
    """Whether the registry says model ``name`` takes vectors (``in_features``)."""
    return model_info(name).input_kind == "vector"


def input_kwargs(name: str, channels: int, size: int) -> dict[str, int]:
    """Keywords that make model ``name`` accept a (N, channels, size, size) batch."""
    if is_vector_model(name):
        return {"in_features": channels * size * size}
    return {"in_channels": channels}


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
