"""Helpers shared by the model-zoo tests."""

from __future__ import annotations

import torch

from gradsight.models import model_info


def is_vector_model(name: str) -> bool:
    """MLPs take ``in_features``; every other registered model takes ``in_channels``."""
    return model_info(name).module == "gradsight.models.mlp"


def input_kwargs(name: str, channels: int, size: int) -> dict[str, int]:
    """Keywords that make model ``name`` accept a (N, channels, size, size) batch."""
    if is_vector_model(name):
        return {"in_features": channels * size * size}
    return {"in_channels": channels}


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
