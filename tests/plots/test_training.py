"""The figures of training runs: gradient flow over the weighted layers, all runs overlaid,
training curves."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import gradsight as gs
from gradsight.plots import training
from gradsight.store.query import DEFAULT_ROLES, layer_matrix
from gradsight.train import train


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> dict[str, Path]:
    """plain-8 and resnet-14, 2 epochs on 200 mnist5k images (the last batch of an epoch is short)."""
    data = gs.data.load_dataset("mnist5k")
    data = replace(data, train_x=data.train_x[:200], train_y=data.train_y[:200],
                   test_x=data.test_x[:64], test_y=data.test_y[:64])
    root = tmp_path_factory.mktemp("training")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {}
        for family, depth in (("plain", 8), ("resnet", 14)):
            key = f"{family}-{depth}"
            runs[key] = train(family, data, "lecture", depth=depth, epochs=2, run_dir=root / key, name=key,
                              progress=False).run_dir
    finally:
        torch.set_num_threads(threads)
    return runs


def test_shown_layers_are_the_convs_and_the_head_in_forward_order(two_runs):
    with gs.open_run(two_runs["plain-8"]) as run:
        names = training.shown_layers(run)
        matrix = layer_matrix(run, "grad_norm", steps=[0, 1], role=DEFAULT_ROLES)
        full = layer_matrix(run, "grad_norm", steps=[0, 1])
    assert names[0] == "stem.conv" and names[-1] == "head.fc" and len(names) == 8  # 7 convs + fc
    assert not any("bn" in n for n in names)
    assert list(matrix.columns) == names and list(matrix.index) == [0, 1]
    assert matrix.equals(full[names])


def test_weighted_layers_and_weighted_matrix_are_deprecated_aliases(two_runs):
    with gs.open_run(two_runs["plain-8"]) as run:
        with pytest.warns(DeprecationWarning, match="shown_layers"):
            names = training.weighted_layers(run)
        with pytest.warns(DeprecationWarning, match="layer_matrix"):
            matrix = training.weighted_matrix(run, "grad_norm", [0, 1])
        assert names == training.shown_layers(run)
        assert matrix.equals(layer_matrix(run, "grad_norm", steps=[0, 1])[names])


def test_late_step_passes_over_the_short_last_batch(two_runs):
    with gs.open_run(two_runs["plain-8"]) as run:
        first, late = training.first_and_late_steps(run)
        assert run.config["steps_per_epoch"] == 4 and run.steps()[-1] == 7
    assert (first, late) == (0, 6)  # 200 = 3 x 64 + 8: step 7 trains on 8 images


def test_grad_flow_is_log_scale_over_the_weighted_layers(two_runs, tmp_path):
    fig = training.grad_flow(two_runs["plain-8"], title="plain-8")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_title() == "plain-8"
    assert len(ax.get_xticklabels()) == 8 and ax.get_xticklabels()[0].get_text() == "stem.conv"
    labels = [line.get_label() for line in ax.get_lines()]
    assert "step 0" in labels and "step 6" in labels
    assert training.save_png(fig, tmp_path / "a" / "flow.png").stat().st_size > 10_000


def test_overlay_puts_every_run_on_relative_depth(two_runs):
    fig = training.grad_flow_overlay(list(two_runs.values()))
    first_ax, late_ax = fig.axes[:2]
    for ax in (first_ax, late_ax):
        assert ax.get_yscale() == "log"
        lines = ax.get_lines()
        assert len(lines) == 2
        for line in lines:
            x = np.asarray(line.get_xdata())
            assert x[0] == 0.0 and x[-1] == 1.0
        assert lines[0].get_color() != lines[1].get_color()  # one colour per family
    assert sorted(len(line.get_xdata()) for line in first_ax.get_lines()) == [8, 14]
    assert late_ax.get_title() == "late in training (step 6)"
    with gs.open_run(two_runs["resnet-14"]) as run:
        expected = layer_matrix(run, "grad_norm", steps=[0], role=DEFAULT_ROLES).loc[0].to_numpy()
    drawn = [line for line in first_ax.get_lines() if line.get_label().startswith("resnet-14")][0]
    np.testing.assert_array_equal(drawn.get_ydata(), expected)


def test_training_curves_draw_train_and_test_error_per_run(two_runs):
    fig = training.training_curves(list(two_runs.values()))
    loss_ax, error_ax = fig.axes[:2]
    assert len(loss_ax.get_lines()) == 2 and len(error_ax.get_lines()) == 4
    assert {line.get_label() for line in error_ax.get_lines()} == {
        "plain-8 train", "plain-8 test", "resnet-14 train", "resnet-14 test"}
    for line in error_ax.get_lines():
        assert list(line.get_xdata()) == [1.0, 2.0]


def test_into_given_axes(two_runs):
    fig = Figure()
    axes = fig.subplots(1, 2)
    assert training.grad_flow_overlay(list(two_runs.values()), axes=axes) is fig
    fig2 = Figure()
    ax = fig2.add_subplot()
    assert training.grad_flow(two_runs["resnet-14"], ax=ax) is fig2


@pytest.fixture(scope="module")
def language_runs(tmp_path_factory) -> dict[str, Path]:
    """gpt_preln and gpt_postln of depth 1, 2 epochs of 3 batches on 4 KiB of pystdlib."""
    data = gs.data.load_dataset("pystdlib", limit=4096)
    recipe = replace(gs.train.get_recipe("gpt"), batch_size=4, context=16, batches_per_epoch=3, epochs=2)
    root = tmp_path_factory.mktemp("lm")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {key: train(key, data, recipe, depth=1, width=16, heads=2, run_dir=root / key, name=key,
                           device="cpu", progress=False).run_dir
                for key in ("gpt_preln", "gpt_postln")}
    finally:
        torch.set_num_threads(threads)


def test_training_curves_of_language_models_show_bits_per_byte(language_runs):
    """Next-byte error says little about a language model: its runs show the train and test
    loss per epoch in bits per byte (the logged loss / ln 2), with nats on the right axis."""
    fig = training.training_curves(list(language_runs.values()))
    loss_ax, bits_ax = fig.axes[:2]
    assert len(loss_ax.get_lines()) == 2
    assert bits_ax.get_ylabel() == "loss in bits per byte (log scale)"
    for key, path in language_runs.items():
        with gs.open_run(path) as run:
            metrics = run.metrics().dropna(subset=["epoch"])
        drawn = {line.get_label(): line for line in bits_ax.get_lines()}
        for split in ("train", "test"):
            line = drawn[f"{key} {split}"]
            assert list(line.get_xdata()) == [1.0, 2.0]
            expected = metrics[f"{split}_loss"].to_numpy() / math.log(2)
            np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
            assert not np.allclose(line.get_ydata(), metrics[f"{split}_error"].to_numpy())
    nats = [child for child in bits_ax.get_children() if type(child).__name__ == "SecondaryAxis"]
    assert len(nats) == 1 and nats[0].get_ylabel() == "loss in nats per byte"
