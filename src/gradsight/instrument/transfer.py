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
        One 1-d NumPy array per part, in order (views into a single host buffer),
        None where the part was None.
    """
    flat = [p.reshape(-1) for p in parts if p is not None]
    host = torch.cat(flat).cpu().numpy()  # the one device-to-host transfer
    bounds = np.cumsum([p.numel() for p in flat])[:-1]
    chunks = iter(np.split(host, bounds))
    return [None if p is None else next(chunks) for p in parts]
