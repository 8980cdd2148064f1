"""``batch_far_below_noise_scale`` / ``batch_far_above_noise_scale``: the batch size against the
gradient noise scale of runs whose noise scale is known (:mod:`tests.noise_runs`)."""

from __future__ import annotations

import pytest

import gradsight as gs
from gradsight.stats.noise_scale import FAR_FACTOR
from tests.noise_runs import record


def _codes(run_dir) -> dict:
    return {f.code: f for f in gs.diagnose(run_dir) if "noise_scale" in f.code}


def test_a_batch_far_below_the_noise_scale_is_said_with_the_factor(tmp_path):
    # |G|² is measured to about tr(Σ) / (B sqrt(steps)): a noise scale 100x the batch is shown
    # beyond two standard errors with some hundreds of steps
    found = _codes(record(tmp_path / "run", noise=10.0, micro=2, accumulate=2, steps=1000))
    finding = found.pop("batch_far_below_noise_scale")
    assert not found
    assert str(finding.severity) == "info"
    assert finding.measured["batch_size"] == 4
    assert finding.measured["noise_over_batch"] > FAR_FACTOR
    assert finding.measured["noise_scale_low"] < 506  # tests/noise_runs.py
    assert f"at least {finding.measured['noise_over_batch']:.3g} times below" in finding.message


def test_a_batch_below_the_noise_scale_that_steps_cannot_show_is_not_a_finding(tmp_path):
    assert not _codes(record(tmp_path / "run", noise=10.0, micro=2, accumulate=2, steps=60))


def test_a_batch_far_above_the_noise_scale_is_said_with_the_factor(tmp_path):
    found = _codes(record(tmp_path / "run", noise=0.0, micro=64, accumulate=4))
    finding = found.pop("batch_far_above_noise_scale")
    assert not found
    assert finding.measured["batch_size"] == 256
    assert finding.measured["noise_scale"] == pytest.approx(6, rel=0.3)  # tests/noise_runs.py
    assert finding.measured["noise_scale"] < finding.measured["noise_scale_high"] < 256 / FAR_FACTOR
    assert f"at least {1 / finding.measured['noise_over_batch']:.3g} times above" in finding.message


def test_a_batch_near_the_noise_scale_is_not_a_finding(tmp_path):
    assert not _codes(record(tmp_path / "run", noise=0.0, micro=4, accumulate=4))


def test_too_few_steps_are_not_judged(tmp_path):
    assert not _codes(record(tmp_path / "run", noise=0.0, micro=64, accumulate=4, steps=12))
