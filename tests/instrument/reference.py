"""Slow, obviously-correct reference statistics (float64, plain Python loops)."""

from __future__ import annotations

import math

import torch
from torch import nn


def tensor_stats(grads: list[torch.Tensor], weights: list[torch.Tensor]) -> dict[str, float]:
    """Statistics of the concatenation of several gradients (and their weights)."""
    g = torch.cat([(x.to_dense() if x.is_sparse else x).detach().double().reshape(-1) for x in grads])
    w = torch.cat([x.detach().double().reshape(-1) for x in weights])
    norm = math.sqrt(float((g * g).sum()))
    wnorm = math.sqrt(float((w * w).sum()))
    n = g.numel()
    return {
        "grad_norm": norm,
        "grad_rms": math.sqrt(float((g * g).sum()) / n),
        "grad_abs_mean": float(g.abs().sum()) / n,
        "grad_abs_max": float(g.abs().max()),
        "grad_zero_frac": float((g == 0).sum()) / n,
        "grad_nonfinite": float((~torch.isfinite(g)).sum()),
        "weight_norm": wnorm,
        "grad_weight_ratio": norm / wnorm if wnorm else (math.inf if norm > 0 else math.nan),
    }


def reference(model: nn.Module, scale: float = 1.0) -> dict[tuple[str, str], dict[str, float]]:
    """``{(level, name): {stat: value}}`` for params, layers and the model.

    Walks ``model.named_parameters()`` (tied parameters once), skips frozen ones
    and ones without a gradient; ``scale`` divides the gradients (mixed precision).
    """
    out: dict[tuple[str, str], dict[str, float]] = {}
    by_layer: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    everything = []
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        if not p.requires_grad or p.grad is None:
            continue
        g = p.grad / scale
        out[("param", name)] = tensor_stats([g], [p])
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        below = [m for n, m in modules.items() if n.startswith(f"{owner}.") or (owner == "" and n)]
        owns_params = any(next(m.parameters(recurse=False), None) is not None for m in below)
        layer = name if owns_params else owner  # a container's own parameter is a layer of its own
        by_layer.setdefault(layer, []).append((g, p))
        everything.append((g, p))
    for layer, pairs in by_layer.items():
        out[("layer", layer)] = tensor_stats([g for g, _ in pairs], [p for _, p in pairs])
    out[("model", "")] = tensor_stats([g for g, _ in everything], [p for _, p in everything])
    return out


def assert_matches(frame, ref, step: int = 0, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    """Every reference value equals the recorded one at ``step``."""
    got = {
        (r.level, r.name, r.stat): r.value
        for r in frame[frame.step == step].itertuples()
    }
    checked = 0
    for (level, name), stats in ref.items():
        for stat, want in stats.items():
            key = (level, name, stat)
            assert key in got, f"missing {key}"
            have = got[key]
            if math.isnan(want):
                assert math.isnan(have), f"{key}: {have} != NaN"
            elif math.isinf(want):
                assert have == want, f"{key}: {have} != {want}"
            else:
                assert math.isclose(have, want, rel_tol=rtol, abs_tol=atol), f"{key}: {have} != {want}"
            checked += 1
    assert checked > 0
