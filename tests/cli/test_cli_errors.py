"""The top-level handler: every failure the user caused is one line on stderr and exit
status 2; a bug in gradsight prints its traceback and a request to report it (exit 1).
Also the smaller promises of the commands: no half-written files, unknown statistics and
steps named, terminal escapes in names shown harmlessly."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
import torch
from torch import nn

import gradsight as gs
import gradsight.cli.info as info_module
from gradsight._errors import RunError
from gradsight.cli import main
from gradsight.store.schema import DB_NAME

ESCAPE = "\x1b[31m"


class HostileNames(nn.Module):
    """Module names with a NUL byte, a terminal escape, ``&`` and markup."""

    def __init__(self) -> None:
        super().__init__()
        self.add_module("a\x00b", nn.Linear(4, 4))
        self.add_module(f"c&lt;{ESCAPE}red<i>", nn.Linear(4, 2))

    def forward(self, x):
        x = torch.relu(getattr(self, "a\x00b")(x))
        return getattr(self, f"c&lt;{ESCAPE}red<i>")(x)


def hostile_model() -> nn.Module:
    torch.manual_seed(0)
    return HostileNames()


@pytest.fixture
def hostile_run(tmp_path):
    model = hostile_model()
    with gs.watch(model, tmp_path / "hostile") as mon:
        for _ in range(3):
            model(torch.randn(5, 4)).pow(2).mean().backward()
            mon.step()
    return tmp_path / "hostile"


def _one_error_line(capsys, contains: str = "") -> str:
    err = capsys.readouterr().err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gradsight: error:") and "Traceback" not in err
    assert contains in lines[0], lines[0]
    assert "\x1b" not in err and "\x00" not in err
    return lines[0]


def _missing_column_store(tiny_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken)
    with sqlite3.connect(broken / DB_NAME) as conn:
        conn.execute("ALTER TABLE params DROP COLUMN layer")
    return broken


# -- user-caused failures: one line, exit status 2 -----------------------------------------
USER_FAILURES = {
    "report_graph_with_wrong_input_shape": (
        lambda run, tmp: ["report", str(run), "--graph", "simple_resnet", "--input-shape", "1,2",
                          "-o", str(tmp / "r.html")], "the forward pass failed on an input of shape (2, 1, 2)"),
    "report_graph_with_flat_input_shape": (
        lambda run, tmp: ["report", str(run), "--graph", "simple_resnet", "--input-shape", "5",
                          "-o", str(tmp / "r.html")], "input of shape (2, 5)"),
    "graph_with_a_huge_input_shape": (
        lambda run, tmp: ["graph", "simple_resnet", "--input-shape", "1,1,100000,100000", "-o", str(tmp / "g.svg")],
        "10,000,000,000 elements per sample"),
    "doctor_with_a_huge_input_shape": (
        lambda run, tmp: ["doctor", "simple_resnet", "--input-shape", "3,10000,10000"], "elements per sample"),
    "info_of_a_missing_run": (lambda run, tmp: ["info", str(tmp / "nothing")], "does not exist"),
    "info_with_an_unknown_stat": (lambda run, tmp: ["info", str(run), "--stat", "nope"],
                                  "has no statistic 'nope' at level 'layer'; available: grad_abs_max"),
    "export_with_an_unknown_stat": (lambda run, tmp: ["export", str(run), "--stat", "grad_norm", "--stat", "nope",
                                                      "-o", str(tmp / "e.csv")],
                                    "has no statistic 'nope'; available: accuracy, eval_mode, grad_abs_max"),
    "report_with_an_unknown_stat": (lambda run, tmp: ["report", str(run), "--stat", "nope", "-o", str(tmp / "r.html")],
                                    "no run records the statistic 'nope'; recorded: accuracy, eval_mode, grad_abs_max"),
    "plot_of_a_step_not_recorded": (lambda run, tmp: ["plot", str(run), "--step", "999", "-o", str(tmp / "p.png")],
                                    "has no recorded step 999; it recorded steps 0, 1, 2"),
    "plot_step_of_another_kind": (lambda run, tmp: ["plot", str(run), "--kind", "heatmap", "--step", "1",
                                                    "-o", str(tmp / "p.png")], "--step applies to --kind flow"),
    "export_to_an_empty_name": (lambda run, tmp: ["export", str(run), "-o", ""], "-o '.' names no file"),
    "doctor_keep_run_into_an_existing_run": (
        lambda run, tmp: ["doctor", "mlp20_lecun_nobias", "--input-shape", "784", "--steps", "1",
                          "--keep-run", str(run)], "already holds a run"),
}


@pytest.mark.parametrize("case", sorted(USER_FAILURES))
def test_user_failure_is_one_line_and_exit_2(tiny_run, tmp_path, capsys, case):
    argv, message = USER_FAILURES[case]
    assert main(argv(tiny_run, tmp_path)) == 2
    _one_error_line(capsys, message)


def test_store_missing_a_column_is_one_line_and_exit_2(tiny_run, tmp_path, capsys):
    broken = _missing_column_store(tiny_run, tmp_path)
    for argv in (["info", str(broken)], ["export", str(broken), "-o", str(tmp_path / "x.csv")]):
        assert main(argv) == 2
        _one_error_line(capsys, str(broken))


def test_doctor_keep_run_leaves_an_existing_run_alone_unless_overwrite(tiny_run, capsys):
    before = (tiny_run / DB_NAME).read_bytes()
    argv = ["doctor", "mlp20_lecun_nobias", "--input-shape", "784", "--steps", "1", "--keep-run", str(tiny_run)]
    assert main(argv) == 2
    assert (tiny_run / DB_NAME).read_bytes() == before
    assert main([*argv, "--overwrite"]) in (0, 1)
    assert gs.open_run(tiny_run).name == "doctor"


@pytest.mark.parametrize("exc", [RunError("no run at x"), FileNotFoundError(2, "No such file", "x.csv"),
                                 PermissionError(13, "Permission denied", "x"), ValueError("bad\nvalue"),
                                 MemoryError(), torch.OutOfMemoryError("CUDA out of memory"),
                                 sqlite3.OperationalError("no such column: layer"),
                                 sqlite3.DatabaseError("file is not a database")])
def test_every_kind_of_user_failure_is_one_line_and_exit_2(tiny_run, capsys, monkeypatch, exc):
    def failing(*args, **kwargs):
        raise exc

    monkeypatch.setattr(info_module, "info_text", failing)
    assert main(["info", str(tiny_run)]) == 2
    _one_error_line(capsys)


# -- bugs: traceback, a request to report, exit status 1 -----------------------------------
@pytest.mark.parametrize("exc", [KeyError("k"), AttributeError("a"), TypeError("t"), RuntimeError("r"),
                                 AssertionError("x"), IndexError("i"), ZeroDivisionError("z")])
def test_a_bug_prints_a_traceback_and_asks_for_a_report(tiny_run, capsys, monkeypatch, exc):
    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr(info_module, "info_text", broken)
    assert main(["info", str(tiny_run)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and type(exc).__name__ in err
    assert "this is a bug in gradsight" in err and "please report it" in err


# -- names with NUL bytes and terminal escapes -----------------------------------------------
def test_graph_of_a_model_with_nul_and_escapes_in_names(tmp_path, capsys):
    out = tmp_path / "g.dot"
    assert main(["graph", "tests.cli.test_cli_errors:hostile_model", "--input-shape", "4", "-o", str(out)]) == 0
    dot = out.read_text()
    assert "\x00" not in dot and "\x1b" not in dot
    assert "a\\\\x00b" in dot and "c&amp;lt;" in dot
    if shutil.which("dot"):
        svg_out = tmp_path / "g.svg"
        assert main(["graph", "tests.cli.test_cli_errors:hostile_model", "--input-shape", "4",
                     "-o", str(svg_out)]) == 0, capsys.readouterr().err
        import xml.dom.minidom

        texts = [t.firstChild.data for t in xml.dom.minidom.parse(str(svg_out)).getElementsByTagName("text")
                 if t.firstChild is not None]
        assert "a\\x00b.bias" in texts and "c&lt;\\x1b[31mred<i>.bias" in texts


def test_info_shows_terminal_escapes_in_names_harmlessly(hostile_run, capsys):
    assert main(["info", str(hostile_run), "--role", "all"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x00" not in out
    assert "c&lt;\\x1b[31mred<i>" in out and "a\\x00b" in out


def test_doctor_shows_terminal_escapes_in_names_harmlessly(hostile_run, capsys):
    main(["doctor", str(hostile_run)])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x00" not in out


# -- files and empty runs ----------------------------------------------------------------------
def test_failed_report_leaves_no_partial_file(tiny_run, tmp_path, capsys):
    target = tmp_path / "reports" / "out.html"
    target.mkdir(parents=True)  # the report cannot replace a directory
    assert main(["report", str(tiny_run), "-o", str(target)]) == 2
    _one_error_line(capsys, "out.html")
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.html"]


def test_diagnose_of_a_run_without_steps_says_there_is_nothing_to_judge(tmp_path, capsys):
    gs.watch(nn.Linear(2, 2), tmp_path / "empty").close()
    findings = gs.diagnose(tmp_path / "empty")
    assert [f.code for f in findings] == ["nothing_recorded"]
    assert main(["doctor", str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    assert "nothing to judge" in out and "no problems found" not in out
