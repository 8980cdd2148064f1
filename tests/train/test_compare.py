"""``gradsight compare`` and ``gradsight demo`` end to end, and bad input: one line, exit 2, nothing left."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import gradsight as gs
from gradsight.cli import main
from gradsight.train import build_model
from gradsight.train import compare as compare_module
from gradsight.train.compare import CompareResult, check_depth, compare

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
    plain8 = build_model("plain", gs.data.load_dataset("mnist5k"), depth=8)
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
    (["--models", "plain,vgg"], ["unknown model family 'vgg'", "plain, resnet"]),
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
    assert "old.txt" not in _entries(out) and (out / "results.csv").exists()
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
