"""``gradsight plot``."""

from __future__ import annotations

import pytest

from gradsight.cli import main


@pytest.mark.parametrize(("kind", "suffix"), [("flow", "png"), ("heatmap", "svg"), ("bands", "pdf"),
                                              ("update", "png"), ("nonfinite", "png")])
def test_plot_kinds_of_one_run(runs_dir, tmp_path, capsys, kind, suffix):
    out = tmp_path / f"fig.{suffix}"
    assert main(["plot", str(runs_dir / "plain4"), "--kind", kind, "-o", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert f"wrote {out}" in capsys.readouterr().out


def test_plot_compare_and_sweep_of_a_directory_of_runs(runs_dir, tmp_path):
    for kind in ("compare", "sweep"):
        out = tmp_path / f"{kind}.png"
        assert main(["plot", str(runs_dir), "--kind", kind, "-o", str(out)]) == 0
        assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_several_runs_stacks_one_panel_per_run(runs_dir, tmp_path):
    out = tmp_path / "flow.svg"
    assert main(["plot", str(runs_dir / "plain4"), str(runs_dir / "plain8"), "--step", "3", "-o", str(out)]) == 0
    svg = out.read_text()
    assert "grad_rms by layer: plain4" in svg and "grad_rms by layer: plain8" in svg


@pytest.mark.parametrize(("args", "message"), [
    (["--stat", "nope"], "has no statistic 'nope' at level 'layer'; available: grad_abs_max"),
    (["-o", "fig.txt"], "must end in .png, .svg or .pdf"),
])
def test_plot_bad_input_is_one_line_and_exit_2(runs_dir, tmp_path, capsys, args, message):
    argv = ["plot", str(runs_dir / "plain4"), *args]
    if "-o" not in args:
        argv += ["-o", str(tmp_path / "fig.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_plot_of_a_missing_run_exits_2(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nothing"), "-o", str(tmp_path / "f.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
