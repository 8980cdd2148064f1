"""Mini-batches over tensors already in memory: index arithmetic, no per-sample Python.

``batches`` covers labelled rows once per epoch; ``token_batch`` draws next-token windows of a
byte stream at random offsets and ``fixed_windows`` gives the same evenly spaced windows each time.
"""

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


def token_batch(
    stream: torch.Tensor,
    context: int,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of next-token windows at random offsets of a token stream.

    ``stream`` is [N] token ids (uint8 bytes or integers). For offsets ``t`` drawn uniformly from
    ``[0, N - context - 1]`` with ``torch.randint`` on ``generator`` (the global RNG if None),
    returns inputs ``stream[t : t + context]`` and targets ``stream[t + 1 : t + context + 1]``,
    both int64 [batch_size, context] on ``stream``'s device.
    """
    _check_windows(stream, context)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    offsets = torch.randint(0, stream.numel() - context, (batch_size,), generator=generator, device=gen_device)
    return _windows(stream, offsets.to(stream.device), context)


def fixed_windows(stream: torch.Tensor, context: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` evenly spaced next-token windows over the whole stream (fewer if they would
    overlap): the same windows every time, so a test loss is comparable between epochs and runs.

    Returns inputs and targets, int64 [windows, context], as :func:`token_batch`.
    """
    _check_windows(stream, context)
    last = stream.numel() - context - 1  # the last valid offset
    count = max(1, min(count, last // context + 1))
    offsets = torch.linspace(0, last, count, dtype=torch.float64).round().long()
    return _windows(stream, offsets.to(stream.device), context)


def _check_windows(stream: torch.Tensor, context: int) -> None:
    if stream.dim() != 1:
        raise ValueError(f"a token stream is one-dimensional; got shape {tuple(stream.shape)}")
    if context < 1:
        raise ValueError(f"context must be at least 1, got {context}")
    if stream.numel() < context + 1:
        raise ValueError(f"a stream of {stream.numel()} tokens is too short for windows of context {context} "
                         f"(needs at least {context + 1})")


def _windows(stream: torch.Tensor, offsets: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    index = offsets[:, None] + torch.arange(context + 1, device=stream.device)
    window = stream[index].long()
    return window[:, :-1], window[:, 1:]
