"""gs.watch's options: declared once (watch_options), resolved once into a frozen WatchOptions,
and passed through by code that starts a monitor for its user (watch_arguments)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.instrument.options import WATCH_KEYWORDS, WatchOptions, check_options, watch_arguments, watch_options


def test_the_monitor_resolves_its_options_once_into_a_frozen_object(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "run", every=3, optimizer=opt, histograms=True, update_ratio=False,
                  weights=False) as mon:
        options = mon.options
    assert isinstance(options, WatchOptions)
    assert [options.schedule(step) for step in range(4)] == [True, False, False, True]
    assert (options.histograms_every, options.update_ratio_every, options.weights) == (1, 0, False)
    assert options.optimizer is opt and options.backend == "auto"
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.weights = True


def test_gs_watch_shows_the_keywords_and_defaults_of_watch_options():
    declared = inspect.signature(watch_options).parameters
    assert list(inspect.signature(gs.watch).parameters)[2:] == list(WATCH_KEYWORDS) == list(declared)
    for keyword, parameter in inspect.signature(gs.watch).parameters.items():
        if keyword in declared:
            assert parameter.default == declared[keyword].default
    defaults = watch_options()
    assert (defaults.histograms_every, defaults.update_ratio_every) == (0, 10)


def test_an_unknown_keyword_is_a_type_error_naming_it(tmp_path):
    with pytest.raises(TypeError, match="unexpected keyword argument 'histogram'"):
        gs.watch(nn.Linear(2, 2), tmp_path / "run", histogram=True)
    assert not (tmp_path / "run").exists()


def test_watch_arguments_add_what_the_caller_sets_to_the_users_options():
    arguments = watch_arguments({"histograms": 2, "config": {"mine": 1, "lr": 0.5}}, "caller",
                                defaults={"update_ratio": True, "histograms": False}, every=4,
                                config={"lr": 0.1, "steps": 3})
    assert arguments == {"update_ratio": True, "histograms": 2, "every": 4,
                         "config": {"lr": 0.5, "steps": 3, "mine": 1}}
    assert watch_arguments(None, "caller", every=2) == {"every": 2}


@pytest.mark.parametrize("options, error, match", [
    ({"every": 2}, TypeError, "caller takes every itself"),
    ({"optimizer": None}, TypeError, "caller takes optimizer itself"),
    ({"no_such": 1}, TypeError, "caller got an unexpected keyword argument 'no_such'"),
    ({"update_ratio": 0}, ValueError, "update_ratio must be"),
    ({"backend": "cuda"}, ValueError, "backend must be"),
])
def test_options_are_checked_before_anything_starts(options, error, match):
    with pytest.raises(error, match=match):
        check_options(options, "caller", taken=("every", "optimizer"))
    with pytest.raises(error, match=match):
        watch_arguments(options, "caller", every=1, optimizer=None)
