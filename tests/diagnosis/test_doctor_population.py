"""A fixed, fast subset of the doctor's calibration (``benchmarks/doctor_population.py``,
``benchmarks/doctor_faults.py``): healthy networks from several libraries get no warning
at 5 and 20 steps, and injected faults get their expected code, both recorded as the
benchmarks record them. The whole population and matrix are the benchmark
(``benchmarks/doctor_calibrate.py``); this subset runs in CI."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

import gradsight as gs

pytest.importorskip("torchvision")
pytest.importorskip("transformers")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def benchmarks():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("doctor_population"), importlib.import_module("doctor_faults")
    finally:
        sys.path.remove(str(BENCHMARKS))


#: Cheap healthy networks of different families and libraries (the whole population: 180).
HEALTHY = ["mlp_relu", "resmlp_layernorm", "lstm_lm", "torch_transformer_encoder_prenorm", "hf_gpt2_tiny",
           "hf_llama_tiny", "hf_bert_tiny", "real_mnist5k_mlp_relu"]


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_network_is_clean_at_5_and_20_steps(benchmarks, name, tmp_path):
    population, _ = benchmarks
    nets = {n.name: n for n in population.load_nets(verbose=False)}
    if name not in nets:
        pytest.skip(f"{name} needs a library that is not installed")
    entry = population.record_net(nets[name], tmp_path, steps=20)
    assert entry["error"] is None, entry.get("traceback")
    for k in (5, 20):
        findings = gs.diagnose(tmp_path / name, until=k - 1)
        assert not [f for f in findings if f.severity >= "warning"], (k, gs.format_findings(findings))


@pytest.mark.parametrize("pair", ["__".join(p) for p in
                                  [("dead_bias", "mlp_relu"), ("detached_module", "mlp_relu"),
                                   ("lr_div_1e4", "mlp_relu"), ("nan_at_module", "mlp_tanh"),
                                   ("fp16_underflow", "mlp_relu"), ("fp16_total_underflow", "mlp_relu"),
                                   ("switched_off_branch", "resmlp_layernorm"), ("unused_module", "mlp_tanh"),
                                   ("dead_outputs", "mlp_relu")]])
def test_injected_fault_gets_its_expected_code(benchmarks, pair, tmp_path):
    _, faults = benchmarks
    fault, net = pair.split("__")
    result = faults.check_pair(fault, net, tmp_path)
    assert result.error is None, result.error
    assert result.caught, (result.expected, result.flagged)


def test_the_ci_subset_is_the_benchmarks_own(benchmarks):
    _, faults = benchmarks
    assert set(faults.CI_SUBSET) <= set(faults.PAIRS)
