"""StepRows: the parameter, layer and model rows of a recorded step, against Python loops."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from gradsight.instrument import rows as rows_module
from gradsight.instrument.rows import LevelIds, StepRows
from gradsight.stats.grad import MAXABS

PARAM_LAYER = np.array([0, 0, 2, 2, 3])  # layer 1 owns no watched parameter
PRESENT = [0, 2, 3]  # parameters 1 and 4 have no gradient: layer 3 has no row


def test_stack_puts_parameters_then_their_layers_then_the_model():
    rows = StepRows(PRESENT, PARAM_LAYER, 4, torch.device("cpu"))
    assert rows.layers == [0, 2] and len(rows) == 6
    assert (rows.params, rows.layer_rows, rows.model) == (slice(0, 3), slice(3, 5), 5)
    values = torch.tensor([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0]])
    want = [[1, 10], [2, 20], [4, 40], [1, 10], [6, 60], [7, 70]]
    assert rows.stack(values).tolist() == want
    assert rows.stack_host(np.array([1, 2, 4])).tolist() == [1, 2, 4, 1, 6, 7]


@pytest.mark.parametrize("dense", [True, False])
def test_stack_host_takes_the_maximum_in_the_maxima_columns(dense, monkeypatch):
    if not dense:
        monkeypatch.setattr(rows_module, "_DENSE_MAX", 0)
    rows = StepRows(PRESENT, PARAM_LAYER, 4, torch.device("cpu"))
    raw = np.random.default_rng(0).random((3, 9))
    stacked = rows.stack_host(raw, maxima=(MAXABS,))
    assert stacked.dtype == np.float64 and stacked.shape == (6, 9)
    for row, members in ((3, [0]), (4, [1, 2]), (5, [0, 1, 2])):
        others = [c for c in range(9) if c != MAXABS]
        np.testing.assert_allclose(stacked[row, others], raw[members][:, others].sum(0), rtol=1e-15)
        assert stacked[row, MAXABS] == raw[members, MAXABS].max()


@pytest.mark.parametrize("dense", [True, False])
def test_stack_host_keeps_nan_and_inf_to_the_rows_that_hold_them(dense, monkeypatch):
    """A non-finite value reaches its layer's and the model's rows and no other (a product with a
    0/1 matrix would spread it as NaN: such values are added one by one)."""
    if not dense:
        monkeypatch.setattr(rows_module, "_DENSE_MAX", 0)
    rows = StepRows(PRESENT, PARAM_LAYER, 4, torch.device("cpu"))
    raw = np.ones((3, 9))
    raw[0, 0] = np.inf
    raw[0, MAXABS] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (NumPy's 'invalid value' warning would reach the user's loop)
        stacked = rows.stack_host(raw, maxima=(MAXABS,))
    assert np.isinf(stacked[[0, 3, 5], 0]).all() and stacked[4, 0] == 2.0
    assert np.isnan(stacked[[0, 3, 5], MAXABS]).all() and stacked[4, MAXABS] == 1.0
    assert np.isfinite(np.delete(stacked, [0, MAXABS], axis=1)).all()


def test_stack_host_without_a_model_row():
    rows = StepRows(PRESENT, PARAM_LAYER, 4, torch.device("cpu"), model=False)
    assert rows.stack_host(np.array([1.0, 2.0, 4.0])).tolist() == [1, 2, 4, 1, 6]
    assert rows.stack(torch.tensor([1.0, 2.0, 4.0])).tolist() == [1, 2, 4, 1, 6]


def test_ids_and_names_follow_the_rows():
    rows = StepRows(PRESENT, PARAM_LAYER, 4, torch.device("cpu"))
    ids = LevelIds(param=np.arange(10).reshape(5, 2), layer=np.arange(100, 108).reshape(4, 2), model=np.array([[-1, 7]]))
    assert rows.ids(ids).tolist() == [[0, 1], [4, 5], [6, 7], [100, 101], [104, 105], [-1, 7]]
    names = rows.names(["a.w", "a.b", "c.w", "c.b", "d.w"], ["a", "b", "c", "d"])
    assert names == [("param", "a.w"), ("param", "c.w"), ("param", "c.b"), ("layer", "a"), ("layer", "c"),
                     ("model", "")]


def test_no_gradient_leaves_the_model_row_alone():
    rows = StepRows([], PARAM_LAYER, 4, torch.device("cpu"))
    assert rows.layers == [] and len(rows) == 1
    assert rows.stack(torch.zeros(0, 2)).tolist() == [[0.0, 0.0]]
