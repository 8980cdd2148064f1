"""Mini-batches over tensors already in memory: index arithmetic, no per-sample Python."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x[i], y[i])`` batches of ``batch_size`` rows covering every row once.

    With ``shuffle`` the rows come in the order of one ``torch.randperm`` drawn from
    ``generator`` (the global RNG if None), so the same generator state gives the same
    batches; without it they come in order, as views. The last batch keeps the remainder
    (it is smaller when ``batch_size`` does not divide N). Batches stay on ``x``'s device.
    """
    num_rows = x.shape[0]
    if y.shape[0] != num_rows:
        raise ValueError(f"x has {num_rows} rows but y has {y.shape[0]}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")

    if not shuffle:
        for start in range(0, num_rows, batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        return

    perm_device = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(num_rows, generator=generator, device=perm_device).to(x.device)
    for start in range(0, num_rows, batch_size):
        index = order[start : start + batch_size]
        yield x.index_select(0, index), y.index_select(0, index.to(y.device))
