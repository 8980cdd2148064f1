"""The torch-free format table equals what torch says about the formats."""

import torch

from gradsight.stats.formats import FORMAT_RANGES, OVERFLOW_STATS, UNDERFLOW_STATS
from gradsight.stats.histogram import FORMATS, HEADROOM_STATS, smallest_subnormal


def test_ranges_equal_torch_finfo():
    assert list(FORMAT_RANGES) == list(FORMATS)
    for name, dtype in FORMATS.items():
        rng = FORMAT_RANGES[name]
        assert rng.smallest == smallest_subnormal(dtype)
        assert torch.tensor(rng.smallest).to(dtype).float().item() == rng.smallest  # representable
        assert rng.largest == torch.finfo(dtype).max
        assert rng.smallest_normal == torch.finfo(dtype).smallest_normal
    assert UNDERFLOW_STATS + OVERFLOW_STATS == HEADROOM_STATS
