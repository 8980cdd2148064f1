"""batches(): every row exactly once per epoch, reproducible from the generator."""

from __future__ import annotations

import pytest
import torch

from gradsight.data import batches


def _rows(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return x, torch.arange(n)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(("n", "batch_size"), [(100, 10), (103, 10), (7, 32), (1, 1)])
def test_every_row_once_per_epoch(n, batch_size, shuffle):
    x, y = _rows(n)
    generator = torch.Generator().manual_seed(0)
    got = list(batches(x, y, batch_size, shuffle=shuffle, generator=generator))

    sizes = [len(yb) for _, yb in got]
    assert sizes == [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    seen = torch.cat([yb for _, yb in got])
    assert sorted(seen.tolist()) == list(range(n))
    for xb, yb in got:  # x and y stay paired
        assert torch.equal(xb[:, 0, 0, 0].long(), yb)
        assert xb.shape[1:] == (1, 2, 2)
    if not shuffle:
        assert seen.tolist() == list(range(n))


def test_shuffle_is_reproducible_from_the_generator():
    x, y = _rows(100)

    def epoch(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([yb for _, yb in batches(x, y, 16, shuffle=True, generator=generator)]).tolist()

    torch.manual_seed(123)
    first = epoch(0)
    torch.manual_seed(456)  # the global RNG plays no part
    assert epoch(0) == first
    assert epoch(1) != first
    assert first != list(range(100))


def test_generator_state_advances_between_epochs():
    x, y = _rows(50)
    generator = torch.Generator().manual_seed(0)
    epoch1 = torch.cat([yb for _, yb in batches(x, y, 8, shuffle=True, generator=generator)])
    epoch2 = torch.cat([yb for _, yb in batches(x, y, 8, shuffle=True, generator=generator)])
    assert not torch.equal(epoch1, epoch2)


def test_rejects_bad_arguments():
    x, y = _rows(10)
    with pytest.raises(ValueError, match="rows"):
        next(batches(x, y[:9], 4, shuffle=False))
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(x, y, 0, shuffle=True))
