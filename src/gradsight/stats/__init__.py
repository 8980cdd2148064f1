"""Pure statistics of gradient and weight tensors."""

from gradsight.stats.grad import (
    GRAD_STATS,
    RAW_FIELDS,
    derive_stats,
    raw_sums,
)

__all__ = ["GRAD_STATS", "RAW_FIELDS", "derive_stats", "raw_sums"]
