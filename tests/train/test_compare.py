"""``gradsight compare`` and ``gradsight demo`` end to end, bad input (one line, exit 2, nothing
left), and the reproduction claim: the same settings on the same thread count recreate a run."""

from __future__ import annotations

import csv
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import gradsight as gs
from gradsight.cli import main
from gradsight.plots import training
from gradsight.store.query import first_last_ratios, layer_matrix
from gradsight.train import build_for_data, train
from gradsight.train import compare as compare_module
from gradsight.train.compare import CompareResult, check_depth, compare, reproducibility

TINY = ["--depths", "8", "--epochs", "1", "--limit", "128", "--quiet"]
FIGURES = {"gradflow-plain-8.png", "gradflow-resnet-8.png", "gradflow-all.png", "training-curves.png"}


def _one_error_line(err: str, *contains: str) -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gradsight: error:") and "Traceback" not in err
    for text in contains:
        assert text in lines[0]
    return lines[0]


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> tuple[Path, str]:
    """One tiny comparison through the CLI: plain-8 and resnet-8, 1 epoch on 128 images."""
    out = tmp_path_factory.mktemp("cmp") / "out"
    with pytest.MonkeyPatch.context() as mp:
        printed: list[str] = []
        mp.setattr("click.echo", lambda message="", **kw: printed.append(str(message)))
        assert main(["compare", "--models", "plain,resnet", *TINY, "--out", str(out)]) == 0
    return out, "\n".join(printed)


def test_compare_writes_tables_runs_and_figures(compared):
    out, printed = compared
    assert {"results.csv", "results.md", "runs", "figures"} <= _entries(out)
    assert _entries(out.parent) == {"out"}  # no staging directory left beside it
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["network"], r["layers"]) for r in rows] == [("plain", "8"), ("resnet", "8")]
    assert list(rows[0]) == ["network", "layers", "parameters", "train_error", "test_error", "test_accuracy", "time_s"]
    for row in rows:
        assert float(row["test_accuracy"]) == pytest.approx(1 - float(row["test_error"]))
    # the twins have the same parameters
    plain8 = build_for_data("plain", gs.data.load_dataset("mnist5k"), depth=8)
    assert rows[0]["parameters"] == rows[1]["parameters"] == str(sum(p.numel() for p in plain8.parameters()))
    markdown = (out / "results.md").read_text()
    assert "| network | layers | parameters | train error | test error | test accuracy | time (s) |" in markdown
    assert "gradsight compare --models plain,resnet --depths 8" in markdown  # the exact command
    assert "Recipe **lecture** (Adam, lr 0.001, batch 64), 1 epoch(s), seed 0" in markdown
    assert FIGURES <= _entries(out / "figures")
    assert all((out / "figures" / name).stat().st_size > 10_000 for name in FIGURES)
    assert sorted(p.name for p in gs.list_runs(out / "runs")) == ["plain-8", "resnet-8"]
    for run_dir in gs.list_runs(out / "runs"):
        with gs.open_run(run_dir) as run:
            assert run.status == "finished"
            assert "test_accuracy" in run.metrics().columns
            assert run.steps()[0] == 0
    assert "| plain | 8 |" in printed and str(out / "figures") in printed and str(out / "runs") in printed
    assert (out / "report.html").stat().st_size > 10_000 and str(out / "report.html") in printed


def test_results_table_ratio_is_the_query_layers_first_last_ratio(compared):
    out, _ = compared
    rows = [line.split(" | ") for line in (out / "results.md").read_text().splitlines()
            if line.startswith(("| plain-8 |", "| resnet-8 |"))]
    assert len(rows) == 4  # first step and late in training, per run
    for cells in rows:
        key, step, ratio = cells[0].strip("| "), int(cells[1]), cells[-1].strip(" |")
        with gs.open_run(out / "runs" / key) as run:
            weighted = layer_matrix(run, "grad_norm", role="weighted", steps=[step])
            assert list(weighted.columns) == training.shown_layers(run)[:-1]  # the head left out
            expected = first_last_ratios(weighted)[step]
        assert ratio == f"{expected:.3g}"


def test_runs_record_family_depth_and_the_conditions_they_reproduce_under(compared):
    out, _ = compared
    with gs.open_run(out / "runs" / "resnet-8") as run:
        config = run.config
    assert config["family"] == "resnet" and config["depth"] == 8
    conditions = config["reproducibility"]
    assert conditions == reproducibility("cpu")  # the test ran on one thread, as the command says
    assert conditions["threads"] == 1 and conditions["torch"] == torch.__version__
    assert set(conditions) >= {"torch", "threads", "cpu", "cpu_capability", "deterministic", "device"}
    assert "--threads 1" in (out / "results.md").read_text()


def test_compare_trains_twins_from_the_same_weights(compared):
    """Same seed: plain-8 and resnet-8 have the same parameters, so they start from the same weights."""
    out, _ = compared
    with gs.open_run(out / "runs" / "plain-8") as plain, gs.open_run(out / "runs" / "resnet-8") as res:
        w_plain = plain.series("weight_norm").loc[0]
        w_res = res.series("weight_norm").loc[0]
    assert w_plain.equals(w_res)


def test_existing_output_needs_overwrite(compared, capsys):
    out, _ = compared
    assert main(["compare", *TINY, "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, "already exists", "--overwrite")


@pytest.mark.parametrize("args, contains", [
    (["--depths", "21"], ["depth 21", "20, 32, 44, 56, 110"]),
    (["--models", "plain,vgg"], ["unknown model 'vgg'", "Valid names: "]),
    (["--dataset", "cifar100"], ["unknown dataset 'cifar100'", "mnist5k"]),
    (["--recipe", "adamw"], ["unknown recipe 'adamw'", "lecture, he2016"]),
    (["--depths", "twenty"], ["--depths", "'twenty'"]),
    (["--every", "0"], ["--every"]),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, contains):
    before = _entries(tmp_path)
    assert main(["compare", *TINY, "--out", str(tmp_path / "out"), *args]) == 2
    captured = capsys.readouterr()
    _one_error_line(captured.err, *contains)
    assert captured.out == ""
    assert _entries(tmp_path) == before


def test_missing_data_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    empty = tmp_path / "no-mnist-here"
    empty.mkdir()
    assert main(["compare", *TINY, "--dataset", "mnist", "--data-dir", str(empty), "--no-download",
                 "--out", str(tmp_path / "out")]) == 2
    _one_error_line(capsys.readouterr().err, "Could not find the MNIST dataset", "--data-dir")
    assert _entries(tmp_path) - {"cache"} == {"no-mnist-here"}


def test_failure_while_training_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []
    real_train = compare_module.train

    def train_then_fail(*args, **kwargs):
        calls.append(kwargs["run_dir"])
        if len(calls) == 2:
            raise RuntimeError("out of memory, say")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(compare_module, "train", train_then_fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        compare(["plain", "resnet"], [8], "mnist5k", out=tmp_path / "out", epochs=1, limit=64, progress=False)
    assert len(calls) == 2 and calls[0].exists() is False
    assert _entries(tmp_path) <= {"cache"}


def test_overwrite_replaces_only_when_the_new_results_are_complete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = compare(["resnet"], "8", "mnist5k", out=out, epochs=1, limit=64, overwrite=True, progress=False)
    assert isinstance(result, CompareResult)
    assert _entries(out) == {"results.csv", "results.md", "runs", "figures"}  # the CLI adds report.html
    assert [p.name for p in result.tables] == ["results.csv", "results.md"]
    assert {p.name for p in result.figures} == {"gradflow-resnet-8.png", "gradflow-all.png", "training-curves.png"}
    assert result.table[0]["network"] == "resnet" and result.reproducibility["device"] == "cpu"
    assert result.run_dirs == [out / "runs" / "resnet-8"] and result.run_dirs[0].exists()
    assert all(p.exists() for p in result.files)
    assert _entries(tmp_path) <= {"out", "cache"}


@pytest.mark.parametrize("family, depth, ok", [
    ("plain", 20, True), ("resnet", 56, True), ("resnet", 110, True), ("plain", 21, False), ("resnet", 2, False),
    ("mlp", 10, True), ("mlp", 9, False),
])
def test_check_depth(family, depth, ok):
    if ok:
        check_depth(family, depth)
    else:
        with pytest.raises(ValueError, match=f"depth {depth} is not valid"):
            check_depth(family, depth)


def test_demo_quick_prints_the_table_and_where_things_are(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| network | layers |" in printed
    for key in ("plain-8", "plain-14", "resnet-8", "resnet-14"):
        assert f"| {key.split('-')[0]} | {key.split('-')[1]} |" in printed
        assert (out / "runs" / key).is_dir()
    assert str(out / "figures") in printed and str(out / "results.md") in printed


# -- reproduction ------------------------------------------------------------------------------

_TRAIN = """
import sys, torch
from dataclasses import replace
import gradsight as gs
from gradsight.train import train
torch.set_num_threads(1)
data = gs.data.load_dataset("mnist5k")
data = replace(data, train_x=data.train_x[:{n}], train_y=data.train_y[:{n}], test_x=data.test_x[:64],
               test_y=data.test_y[:64])
train("resnet", data, "lecture", depth=8, epochs=1, run_dir=sys.argv[1], every=1, progress=False)
"""


def _values(run_dir: Path) -> pd.DataFrame:
    """Every recorded value but wall times, in a fixed order."""
    with gs.open_run(run_dir) as run:
        frame = run.frame()
    frame = frame[~frame["stat"].str.endswith("_time_s")]
    return frame.sort_values(["step", "level", "name", "stat"]).reset_index(drop=True)


def _tiny(data, n: int = 128):
    return replace(data, train_x=data.train_x[:n], train_y=data.train_y[:n], test_x=data.test_x[:64],
                   test_y=data.test_y[:64])


def test_same_settings_and_thread_count_recreate_a_run_bit_for_bit(tmp_path, small_data):
    """Two trainings in this process and one in a fresh interpreter, all on one thread: every
    recorded value (gradients, weights, losses, epoch metrics) is identical, not just close."""
    data = _tiny(small_data)
    for name in ("a", "b"):
        train("resnet", data, "lecture", depth=8, epochs=1, run_dir=tmp_path / name, every=1, progress=False)
    subprocess.run([sys.executable, "-c", _TRAIN.format(n=128), str(tmp_path / "c")], check=True, timeout=120)
    reference = _values(tmp_path / "a")
    assert len(reference) > 500 and reference["step"].nunique() == 2
    for other in ("b", "c"):
        values = _values(tmp_path / other)
        assert values[["step", "level", "name", "stat"]].equals(reference[["step", "level", "name", "stat"]])
        np.testing.assert_array_equal(values["value"].to_numpy(), reference["value"].to_numpy())


def test_recording_does_not_change_training(tmp_path, small_data):
    """What is recorded, and how often, leaves the training itself untouched, so a short run
    (the demo) gives the first epochs of a longer one with the same settings bit for bit."""
    data = _tiny(small_data)
    every_step = train("plain", data, "lecture", depth=8, epochs=2, run_dir=tmp_path / "all", every=1,
                       progress=False)
    sparse = train("plain", data, "lecture", depth=8, epochs=1, run_dir=tmp_path / "sparse", every=5,
                   progress=False)
    assert sparse.epochs[0] == replace(every_step.epochs[0], time_s=sparse.epochs[0].time_s)
    with gs.open_run(tmp_path / "all") as full, gs.open_run(tmp_path / "sparse") as short:
        assert short.steps() == [0]
        assert short.series("grad_norm").loc[0].equals(full.series("grad_norm").loc[0])


def test_watch_options_go_to_every_run_and_are_checked_before_training(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(compare_module, "train", lambda *args, **kwargs: seen.append(kwargs["watch"]) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        compare(["plain"], [8], "mnist5k", out=tmp_path / "out", epochs=1, limit=64, progress=False, histograms=2,
                watch={"weights": False})
    assert seen == [{"activations": False, "histograms": 2, "weights": False}]
    for bad in ({"every": 2}, {"no_such_option": 1}):
        with pytest.raises(TypeError, match=next(iter(bad))):
            compare(["plain"], [8], "mnist5k", out=tmp_path / "out", epochs=1, limit=64, progress=False, watch=bad)
    assert len(seen) == 1 and _entries(tmp_path) <= {"cache"}
