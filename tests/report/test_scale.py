"""The scale benchmark's store at a small size: long runs are downsampled for display only."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import gradsight as gs
from gradsight.report import write_report
from gradsight.store.query import DEFAULT_MAX_STEPS, step_sample

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "report_scale.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("report_scale", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_of_a_long_run_shows_sampled_steps_but_every_nonfinite_step(tmp_path):
    bench = load_benchmark()
    run_dir = bench.build_store(tmp_path / "scale", layers=40, steps=900)
    out = write_report([run_dir], tmp_path / "report.html")
    text = out.read_text()
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', text, re.S).group(1))["runs"][0]
    assert data["steps"] == step_sample(list(range(900))) and len(data["steps"]) == DEFAULT_MAX_STEPS
    assert data["total_steps"] == 900
    assert sorted({e[0] for e in data["nonfinite"]}) == [300, 301, 600]
    assert len(data["names"]["layer"]) == 40
    with gs.open_run(run_dir) as run:
        assert len(run.steps()) == 900
    assert out.stat().st_size < 2_000_000


def test_benchmark_script_runs_and_checks_limits(tmp_path, capsys):
    bench = load_benchmark()
    assert bench.main(["--layers", "6", "--steps", "50", "--check", "--store", str(tmp_path / "s")]) == 0
    assert "report of 6 layers x 50 steps" in capsys.readouterr().out
