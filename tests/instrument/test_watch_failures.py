"""A failed ``gs.watch`` leaves nothing behind (no thread, no hook, no run files) and a retry
into the same directory works; models with nothing trainable and parameters added after
``watch()`` are warned about."""

from __future__ import annotations

import pickle
import threading
import warnings

import pytest
import torch
from torch import nn

import gradsight as gs
import gradsight.instrument.monitor as monitor_module


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _hook_count(model: nn.Module) -> int:
    return sum(len(d) for m in model.modules()
               for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks))


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("gradsight")]


BAD_ARGUMENTS = [
    dict(optimizer="sgd"),
    dict(optimizer=[1, 2]),
    dict(scaler="amp"),
    dict(backend="cuda"),
    dict(every=0),
    dict(every="often"),
    dict(config=["lr", 0.1]),
    dict(name=3),
    dict(overwrite="yes"),
    dict(distributed="everywhere"),
    dict(activations=3),
    dict(activations=True, residual_blocks=["no.such.module"]),
    dict(residual_blocks="0"),
    dict(histograms=0),
    dict(histograms="often"),
    dict(update_ratio=0),
    dict(update_ratio=-10),
    dict(update_ratio=2.5),
    dict(update_ratio="often"),
]


@pytest.mark.parametrize("bad", BAD_ARGUMENTS, ids=[next(iter(b.items()))[0] + "=" + repr(b[next(iter(b))])
                                                     if len(b) == 1 else "residual_blocks" for b in BAD_ARGUMENTS])
def test_argument_error_leaves_nothing_behind_and_retry_works(tmp_path, bad):
    model = _model()
    threads_before = _writer_threads()
    run_dir = tmp_path / "runs" / "x"
    with pytest.raises((TypeError, ValueError)):
        gs.watch(model, run_dir, **bad)
    assert _writer_threads() == threads_before
    assert _hook_count(model) == 0
    pickle.dumps(model)
    assert not (tmp_path / "runs").exists()
    with gs.watch(model, run_dir) as mon:
        model(torch.randn(2, 3)).sum().backward()
        mon.step()
    assert list(gs.open_run(run_dir).steps()) == [0]


def test_failure_after_the_store_exists_deletes_it(tmp_path, monkeypatch):
    """A failure later in construction (here: writing the layer table) undoes everything."""
    model = _model()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(monitor_module, "LayerTable", broken)
    with pytest.raises(RuntimeError, match="boom"):
        gs.watch(model, existing)
    with pytest.raises(RuntimeError, match="boom"):
        gs.watch(model, tmp_path / "new" / "run")
    assert _writer_threads() == []
    assert _hook_count(model) == 0
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    with gs.watch(model, existing):
        pass


def test_model_without_trainable_parameters_warns(tmp_path):
    model = _model().requires_grad_(False)
    with pytest.warns(UserWarning, match="no trainable parameters"):
        gs.watch(model, tmp_path / "run").close()


def test_parameters_added_after_watch_warn_once_by_name(tmp_path):
    model = _model()
    with gs.watch(model, tmp_path / "run") as mon:
        model.extra = nn.Linear(2, 2)
        model(torch.randn(2, 3)).sum().backward()
        with pytest.warns(UserWarning, match=r"extra\.weight, extra\.bias") as caught:
            mon.step()
        assert sum("added to the model after" in str(w.message) for w in caught) == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(2):
                model(torch.randn(2, 3)).sum().backward()
                mon.step()
    names = set(gs.open_run(tmp_path / "run").frame(level="param").name)
    assert "extra.weight" not in names and "0.weight" in names


def test_complete_model_does_not_warn(tmp_path):
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with gs.watch(model, tmp_path / "run") as mon:
            model(torch.randn(2, 3)).sum().backward()
            mon.step()


def test_parameters_added_later_in_training_are_found(tmp_path):
    """The check runs at the 1st, 2nd, 3rd, 5th, 9th, ... recorded step."""
    model = _model()
    with gs.watch(model, tmp_path / "run") as mon:
        for _ in range(5):
            model(torch.randn(2, 3)).sum().backward()
            mon.step()
        model.late = nn.Parameter(torch.ones(3))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(4):
                model(torch.randn(2, 3)).sum().backward()
                mon.step()
    assert [str(w.message).count("late") for w in caught] == [1]


def test_lazy_module_before_its_first_forward_is_refused_leaving_nothing_behind(tmp_path):
    model = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Sequential(nn.LazyLinear(2)))
    run_dir = tmp_path / "runs" / "x"
    hooks_before = _hook_count(model)  # (a lazy module's own pre-hook)
    with pytest.raises(ValueError) as caught:
        gs.watch(model, run_dir)
    assert str(caught.value) == "run one forward pass before gs.watch (lazy modules: 0, 2.0)"
    assert _writer_threads() == []
    assert _hook_count(model) == hooks_before
    assert not (tmp_path / "runs").exists()
    model(torch.randn(2, 3))  # the forward pass initializes them
    with gs.watch(model, run_dir) as mon:
        model(torch.randn(2, 3)).sum().backward()
        mon.step()
    assert set(gs.open_run(run_dir).frame(level="layer").name) == {"0", "2.0"}
