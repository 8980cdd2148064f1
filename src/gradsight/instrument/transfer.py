"""The single device-to-host copy of a recorded step."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def to_host(parts: Sequence[Tensor | None]) -> list[np.ndarray | None]:
    """Copy several tensors of one device and dtype to the host in one transfer.

    Args:
        parts: tensors of any shape (flattened), or None for a part that is absent.

    Returns:
        One 1-d NumPy array per part, in order (views into a single host buffer; copies
        of CPU tensors, taken without joining them), None where the part was None.
    """
    given = [p for p in parts if p is not None]
    if _all_on_cpu(given):  # (copies: the tensors may change after the step)
        host = [p.detach().numpy().reshape(-1).copy() for p in given]
    else:
        flat = [p.reshape(-1) for p in given]
        joined = torch.cat(flat).cpu().numpy()  # the one device-to-host transfer
        host, start = [], 0
        for p in flat:
            host.append(joined[start:start + p.numel()])
            start += p.numel()
    chunks = iter(host)
    return [None if p is None else next(chunks) for p in parts]


def _all_on_cpu(parts: Sequence[Tensor]) -> bool:
    """Whether every part is on the CPU, where they are copied one by one, not joined (a
    function of its own so that a test can send CPU tensors down the joined path)."""
    return all(p.device.type == "cpu" for p in parts)
