"""The ``gradsight`` command line: help, info, export, demo, and one-line errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.cli import main
from gradsight.store.schema import DB_NAME
from tests.plots.runs import make_normed_run
from tests.store.helpers import corrupt_table

COMMANDS = ("info", "export", "demo")
SUBPROCESS_TIMEOUT_S = 120


def _assert_one_error_line(err: str, *, contains: str = "") -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("gradsight: error:"), lines[0]
    assert "Traceback" not in err
    assert contains in lines[0]
    return lines[0]


def _run_cli(*args: str, script: bool = False) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter: ``python -m gradsight.cli`` or the installed console script."""
    if script:
        exe = Path(sys.executable).with_name("gradsight")
        if not exe.exists():
            pytest.skip(f"console script not installed next to {sys.executable}")
        cmd = [str(exe), *args]
    else:
        cmd = [sys.executable, "-m", "gradsight.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)


def _normalized(frame: pd.DataFrame) -> pd.DataFrame:
    """Model rows have name '' and metric/model rows layer None; in CSV both read back as missing."""
    frame = frame.copy()
    for col in ("level", "name", "layer", "role", "stat"):
        frame[col] = frame[col].fillna("").astype(str)
    return frame.reset_index(drop=True)


@pytest.fixture
def nonfinite_run(tmp_path) -> Path:
    """Two recorded steps of an MLP, plus NaN and +-inf values (a non-finite gradient and metrics)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    run_dir = tmp_path / "nonfinite"
    with gs.watch(model, run_dir) as monitor:
        model(torch.randn(5, 3)).sum().backward()
        monitor.step()
        model.zero_grad()
        model(torch.randn(5, 3)).sum().backward()
        model[2].bias.grad[0] = float("nan")
        model[0].bias.grad[1] = float("inf")
        monitor.step()
        monitor.log({"loss": float("nan"), "up": float("inf"), "down": float("-inf"), "acc": 0.123456789012345})
    return run_dir


# -- help --------------------------------------------------------------------------------


def test_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(capsys, command):
    assert main([command, "--help"]) == 0
    assert f"Usage: gradsight {command}" in capsys.readouterr().out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert gs.__version__ in capsys.readouterr().out


def test_help_in_a_fresh_interpreter():
    result = _run_cli("--help")
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert command in result.stdout
    assert result.stderr == ""


# -- info --------------------------------------------------------------------------------


def test_info_summarizes_the_run(capsys, tiny_run):
    assert main(["info", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    assert "torch.nn.modules.container.Sequential" in out
    assert "3 recorded, 0..2" in out
    assert "layers:     2" in out
    assert "finished" in out
    assert "smallest mean grad_rms among weighted layers and head" in out
    assert "largest mean grad_rms" in out


def test_info_ranks_layers_by_their_mean_statistic(capsys, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(5)])
    run_dir = tmp_path / "run"
    with gs.watch(model, run_dir) as monitor:
        for _ in range(2):
            model(torch.randn(6, 4)).pow(2).sum().backward()
            monitor.step()
            model.zero_grad()
    with gs.open_run(run_dir) as run:
        frame = run.frame(level="layer", stat="grad_norm")
    means = frame.groupby("name")["value"].mean().sort_values()

    assert main(["info", str(run_dir), "--top", "2", "--stat", "grad_norm"]) == 0
    out = capsys.readouterr().out.splitlines()
    smallest = out.index("smallest mean grad_norm among weighted layers and head (depth, layer, role, value):")
    largest = out.index("largest mean grad_norm:")
    names = lambda rows: [row.split()[1] for row in rows]  # noqa: E731
    assert names(out[smallest + 1 : largest]) == list(means.index[:2])
    assert names(out[largest + 1 :]) == list(means.index[::-1][:2])


def test_info_shows_the_root_module_by_its_display_name(capsys, tmp_path):
    from gradsight.display import ROOT_DISPLAY_NAME

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)  # the model itself is its only layer, named ''
    with gs.watch(model, tmp_path / "run") as monitor:
        model(torch.randn(4, 3)).sum().backward()
        monitor.step()
    assert main(["info", str(tmp_path / "run"), "--top", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    smallest = out.index("smallest mean grad_rms among weighted layers and head (depth, layer, role, value):")
    assert out[smallest + 1].split()[1:3] == [ROOT_DISPLAY_NAME, "head"]
    assert "layers:     1" in out[5]


@pytest.fixture
def normed_run(tmp_path) -> Path:
    return make_normed_run(tmp_path / "normed")


def _ranked(out: str) -> list[tuple[str, str]]:
    """``(layer, role)`` of the rows under 'smallest mean' and 'largest mean'."""
    return [tuple(line.split()[1:3]) for line in out.splitlines() if line.startswith("  ")]


def test_info_ranks_weighted_layers_and_the_head_by_default_and_every_role_on_request(capsys, normed_run):
    assert main(["info", str(normed_run), "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "layers:     5 (depth order from forward); 2 norm, 2 weighted, 1 head" in out
    assert {name for name, _ in _ranked(out)} == {"c1", "c2", "fc"}
    assert dict(_ranked(out))["fc"] == "head"
    assert main(["info", str(normed_run), "--top", "5", "--role", "norm"]) == 0
    out = capsys.readouterr().out
    assert "smallest mean grad_rms among norm layers" in out
    assert {name for name, _ in _ranked(out)} == {"b1", "b2"}
    assert main(["info", str(normed_run), "--top", "5", "--role", "all"]) == 0
    assert {name for name, _ in _ranked(capsys.readouterr().out)} == {"c1", "b1", "c2", "b2", "fc"}


def test_info_of_a_statistic_that_was_not_recorded_is_one_error_line(capsys, normed_run):
    assert main(["info", str(normed_run), "--stat", "nope"]) == 2
    _assert_one_error_line(capsys.readouterr().err, contains="has no statistic 'nope' at level 'layer'")


def test_export_filters_by_role(normed_run, tmp_path):
    out_file = tmp_path / "norm.csv"
    assert main(["export", str(normed_run), "-o", str(out_file), "--role", "norm", "--role", "head"]) == 0
    got = pd.read_csv(out_file, dtype={"level": str, "name": str, "layer": str, "stat": str})
    assert set(got["role"]) == {"norm", "head"} and set(got["layer"]) == {"b1", "b2", "fc"}
    assert set(got["level"]) == {"layer", "param"}
    assert main(["export", str(normed_run), "-o", str(tmp_path / "tb"), "--format", "tensorboard",
                 "--role", "norm"]) == 2


def test_role_choices_are_the_store_roles():
    from gradsight.cli.plot import ROLE_CHOICES
    from gradsight.store.roles import Role

    assert ROLE_CHOICES == ("all", *Role.ALL)


def test_info_with_another_stat(capsys, tiny_run):
    assert main(["info", str(tiny_run), "--stat", "weight_norm", "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "smallest mean weight_norm" in out


def test_info_of_a_killed_run_without_steps(capsys, tmp_path):
    """A store that has metadata but no committed step (e.g. killed right after watch())."""
    model = nn.Linear(2, 1)
    monitor = gs.watch(model, tmp_path / "run")
    monitor.flush()
    assert main(["info", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "0 recorded" in out
    assert "running" in out
    monitor.close()


# -- export ------------------------------------------------------------------------------


def test_export_csv_round_trips_to_frame(capsys, nonfinite_run, tmp_path):
    out_file = tmp_path / "out" / "run.csv"  # parent folder is created
    assert main(["export", str(nonfinite_run), "--format", "csv", "-o", str(out_file)]) == 0
    with gs.open_run(nonfinite_run) as run:
        expected = run.frame()
    assert f"wrote {len(expected):,} rows" in capsys.readouterr().out
    assert not list(out_file.parent.glob("*.partial"))

    got = pd.read_csv(out_file, dtype={"level": str, "name": str, "layer": str, "role": str, "stat": str})
    assert list(got.columns) == ["step", "level", "name", "layer", "depth", "role", "stat", "value"]
    assert len(got) == len(expected)
    depths = pd.read_csv(out_file, dtype=str)["depth"].dropna()
    assert len(depths) and not depths.str.contains(r"\.").any()  # forward ranks written as integers
    assert np.isnan(expected["value"]).any() and np.isposinf(expected["value"]).any()
    pd.testing.assert_frame_equal(_normalized(got), _normalized(expected), check_dtype=False, check_exact=True)


def test_export_parquet_round_trips_exactly(capsys, nonfinite_run, tmp_path):
    pytest.importorskip("pyarrow")
    out_file = tmp_path / "run.parquet"
    assert main(["export", str(nonfinite_run), "--format", "parquet", "-o", str(out_file)]) == 0
    with gs.open_run(nonfinite_run) as run:
        expected = run.frame()
    pd.testing.assert_frame_equal(pd.read_parquet(out_file), expected, check_exact=True)


def test_export_filters_by_level_and_stat(nonfinite_run, tmp_path):
    out_file = tmp_path / "run.csv"
    argv = ["export", str(nonfinite_run), "-o", str(out_file), "--level", "layer", "--level", "model"]
    assert main(argv + ["--stat", "grad_norm", "--stat", "grad_rms"]) == 0
    with gs.open_run(nonfinite_run) as run:
        expected = run.frame(level=["layer", "model"], stat=["grad_norm", "grad_rms"])
    got = pd.read_csv(out_file, dtype={"level": str, "name": str, "layer": str, "stat": str})
    assert set(got["level"]) == {"layer", "model"}
    assert set(got["stat"]) == {"grad_norm", "grad_rms"}
    pd.testing.assert_frame_equal(_normalized(got), _normalized(expected), check_dtype=False)


def test_export_replaces_an_existing_file(nonfinite_run, tmp_path):
    out_file = tmp_path / "run.csv"
    out_file.write_text("old contents\n")
    assert main(["export", str(nonfinite_run), "-o", str(out_file)]) == 0
    assert out_file.read_text().startswith("step,level,name,layer,depth,role,stat,value")


def test_export_in_a_fresh_interpreter_with_the_console_script(tiny_run, tmp_path):
    out_file = tmp_path / "run.csv"
    result = _run_cli("export", str(tiny_run), "-o", str(out_file), script=True)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    with gs.open_run(tiny_run) as run:
        assert len(pd.read_csv(out_file)) == len(run.frame())


# -- errors --------------------------------------------------------------------------------


def _write_random_store(tmp_path: Path) -> Path:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / DB_NAME).write_bytes(np.random.default_rng(0).bytes(4096))
    return tmp_path / "junk"


@pytest.mark.parametrize("command", [["info"], ["export", "-o", "out.csv"]])
@pytest.mark.parametrize(
    "make_path, message",
    [
        (lambda tmp: tmp / "missing", "does not exist"),
        (lambda tmp: tmp, "is not a gradsight run"),
        (_write_random_store, "not a SQLite database"),
    ],
    ids=["missing", "no-store", "random-bytes"],
)
def test_bad_run_path_is_one_error_line_and_exit_2(capsys, tmp_path, monkeypatch, command, make_path, message):
    monkeypatch.chdir(tmp_path)
    path = make_path(tmp_path)
    assert main([command[0], str(path), *command[1:]]) == 2
    captured = capsys.readouterr()
    _assert_one_error_line(captured.err, contains=message)
    assert captured.out == ""
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(("command", "table", "fails"), [
    (["info"], "steps", True),
    (["info"], "packed", True),
    (["info"], "params", True),
    (["export", "-o", "out.csv"], "steps", False),  # export reads the values, not the list of steps
    (["export", "-o", "out.csv"], "packed", True),
    (["export", "-o", "out.csv"], "params", True),
])
def test_corrupted_store_is_one_error_line_and_exit_2(capsys, tiny_run, monkeypatch, command, table, fails):
    monkeypatch.chdir(tiny_run.parent)
    corrupt_table(tiny_run, table)
    code = main([command[0], str(tiny_run), *command[1:]])
    captured = capsys.readouterr()
    if not fails:
        assert code == 0 and captured.err == ""
        return
    assert code == 2
    _assert_one_error_line(captured.err, contains="malformed")


def test_export_to_a_directory_is_one_error_line(capsys, tiny_run, tmp_path):
    target = tmp_path / "a_directory"
    target.mkdir()
    assert main(["export", str(tiny_run), "-o", str(target)]) == 2
    _assert_one_error_line(capsys.readouterr().err)
    assert target.is_dir()


def test_export_below_a_file_is_one_error_line(capsys, tiny_run, tmp_path):
    (tmp_path / "a_file").write_text("x")
    assert main(["export", str(tiny_run), "-o", str(tmp_path / "a_file" / "out.csv")]) == 2
    _assert_one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["frobnicate"], "No such command"),
        (["inf"], "No such command"),
        (["--bogus"], "No such option"),
        (["info", "--sta", "x", "run"], "No such option"),
        (["info"], "Missing argument"),
        (["export", "run"], "Missing option"),
        (["export", "run", "-o", "x", "--format", "xml"], "Invalid value"),
        (["export", "run", "-o", "x", "--level", "weights"], "Invalid value"),
        (["info", "run", "--top", "0"], "Invalid value"),
        (["demo", "--epochs", "many"], "Invalid value"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    _assert_one_error_line(captured.err, contains=message)
    assert captured.out == ""


def test_bad_path_in_a_fresh_interpreter_has_no_traceback(tmp_path):
    result = _run_cli("info", str(tmp_path / "missing"), script=True)
    assert result.returncode == 2
    _assert_one_error_line(result.stderr, contains="does not exist")
    assert result.stdout == ""


# -- demo ----------------------------------------------------------------------------------


def test_demo_quick_writes_readable_runs_and_a_report(capsys, tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    runs = gs.list_runs(out)
    assert len(runs) == 4  # plain and residual at two depths
    assert (out / "results.csv").exists() and (out / "report.html").exists()
    for run_dir in runs:
        with gs.open_run(run_dir) as run:
            assert run.status == "finished"
            assert run.steps()
            assert "test_accuracy" in run.metrics().columns
            assert {"param", "layer", "model", "metric"} <= set(run.frame()["level"])
    assert str(out) in printed


def test_failed_export_leaves_no_partial_file(capsys, tiny_run, tmp_path):
    target = tmp_path / "a_directory"
    target.mkdir()
    assert main(["export", str(tiny_run), "-o", str(target)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_directory", "tiny_run"]


def test_no_arguments_shows_the_help_not_an_error(capsys):
    main([])
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    for command in COMMANDS:
        assert command in shown
    assert "gradsight: error:" not in shown
