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
                                   ("dead_outputs", "mlp_relu"), ("lr_x100", "mlp_relu"),
                                   ("missing_zero_grad", "mlp_relu")]])
def test_injected_fault_gets_its_expected_code(benchmarks, pair, tmp_path):
    _, faults = benchmarks
    fault, net = pair.split("__")
    result = faults.check_pair(fault, net, tmp_path)
    assert result.error is None, result.error
    assert result.caught, (result.expected, result.flagged)


def test_the_ci_subset_is_the_benchmarks_own(benchmarks):
    _, faults = benchmarks
    assert set(faults.CI_SUBSET) <= set(faults.PAIRS)


def test_bn_values_counts_what_each_batchnorm_normalizes(benchmarks):
    """A BatchNorm2d over (N, C, H, W) normalizes N*H*W values per channel, a BatchNorm1d over
    (N, C) N of them: the recipe check takes the fewest."""
    import torch
    from torch import nn

    population, _ = benchmarks
    from doctor_cases import Training

    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    batch = lambda gen: (torch.randn(5, 3, 8, 8, generator=gen), torch.randint(0, 2, (5,), generator=gen))  # noqa: E731
    loss = lambda m, x, y: nn.functional.cross_entropy(m(x), y)  # noqa: E731
    training = Training(model, torch.optim.SGD(model.parameters(), lr=0.1), batch, loss, steps=1)
    assert population.bn_values(training) == 5  # BatchNorm1d: the batch; BatchNorm2d: 5 * 4 * 4 = 80
    model[4] = nn.Identity()
    assert population.bn_values(training) == 80
    assert population.bn_values(Training(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)), None, batch, loss, 1)) is None


def test_health_rejects_a_diverging_run_and_keeps_a_calm_one(benchmarks, tmp_path):
    """The population's health criterion reads the loss only (never the doctor): Adam at lr 1 on
    a tanh MLP makes the loss rise 10-30x above its start; lr 1e-3 keeps it there."""
    import torch
    from torch import nn

    population, _ = benchmarks
    for lr, sick in ((1.0, True), (1e-3, False)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(0)
        with gs.watch(model, tmp_path / f"lr{lr}", optimizer=opt) as mon:
            for _ in range(20):
                x, y = torch.randn(32, 16, generator=gen), torch.randint(0, 4, (32,), generator=gen)
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                mon.step(loss)
                opt.step()
                opt.zero_grad()
        reason = population.health(tmp_path / f"lr{lr}", {"bn_values": None})
        assert (reason is not None) == sick, reason
        if sick:
            assert reason.startswith("loss ")
    assert population.health(tmp_path / "lr0.001", {"bn_values": 4}).startswith("BatchNorm over 4 values")


def test_the_majority_token_task_labels_the_most_frequent_group(benchmarks):
    """``doctor_faults.py effect`` trains token classifiers on the majority token group:
    counted here with a Python Counter, ties to the highest group."""
    from collections import Counter

    import torch

    _, faults = benchmarks
    ids, labels = faults._majority_tokens(100, 24, 5, 64)(torch.Generator().manual_seed(3))
    assert ids.shape == (64, 24) and labels.shape == (64,)
    for row, label in zip(ids.tolist(), labels.tolist()):
        counts = Counter(t % 5 for t in row)
        top = max(counts.values())
        assert label == max(g for g, c in counts.items() if c == top)


def test_the_effect_task_keeps_each_networks_input_shapes(benchmarks):
    """Fashion-MNIST replaces random images at the network's channels and size (or pooled to
    the width of a flat input); a loss without one label per example is not applicable."""
    import torch
    from torch import nn

    _, faults = benchmarks
    from doctor_cases import Training

    loss = lambda m, x, y: nn.functional.cross_entropy(m(x), y)  # noqa: E731
    for shape in ((3, 40, 40), (64,)):
        batch = lambda gen, shape=shape: (torch.randn(6, *shape, generator=gen),  # noqa: E731
                                          torch.randint(0, 10, (6,), generator=gen))
        make, (test_x, test_y), task = faults._real_task(Training(nn.Identity(), None, batch, loss, 1))
        x, y = make(torch.Generator().manual_seed(0))
        assert task == "fashion-mnist" and x.shape == (6, *shape) and y.dtype == torch.long
        assert test_x.shape[1:] == shape and len(test_x) == len(test_y) == faults.EFFECT_EVAL
    lm = lambda gen: (torch.randint(0, 9, (2, 5), generator=gen), torch.randint(0, 9, (2, 5), generator=gen))  # noqa: E731
    with pytest.raises(faults.NotApplicable):
        faults._real_task(Training(nn.Identity(), None, lm, loss, 1))


def test_the_networks_kept_out_are_apart_from_the_population(benchmarks):
    population, _ = benchmarks
    kept = {n.name for n in population.load_nets(verbose=False)}
    unseen = population.load_nets(verbose=False, unseen=True)
    assert len(unseen) >= 40 and not kept & {n.name for n in unseen}


def test_faults_on_the_networks_kept_out_use_only_them(benchmarks):
    population, faults = benchmarks
    unseen = {n.name for n in population.load_nets(verbose=False, unseen=True)}
    nets = {net for _, net in faults.UNSEEN_PAIRS}
    assert nets <= unseen and len(nets) >= 10
    assert {fault for fault, _ in faults.UNSEEN_PAIRS} <= set(faults.FAULT_BY_NAME)
    # the kinds whose verdict depends on the network's normalization (see REVISED) only with an
    # expectation of their own per network
    assert {p for p in faults.UNSEEN_PAIRS if p[0] in {f for f, _ in faults.REVISED}} == set(faults.UNSEEN_EXPECTED)


def test_a_fault_with_nothing_to_change_is_no_crash(benchmarks, tmp_path):
    _, faults = benchmarks
    (tmp_path / "index.jsonl").write_text(
        '{"name": "dead_bias__n", "steps": 20, "error": "NotApplicable: no biased layer"}\n')
    (result,) = faults.judge(tmp_path, [("dead_bias", "n")])
    assert result.error == "not applicable" and not faults._crashed(result) and not result.caught
    assert "1 not applicable" in faults.tables([result]) and "0 crashed" in faults.tables([result])


def test_the_calibration_counts_the_fault_sets_outside_the_matrix(benchmarks, tmp_path):
    import pandas as pd

    sys.path.insert(0, str(BENCHMARKS))
    try:
        calibrate = importlib.import_module("doctor_calibrate")
    finally:
        sys.path.remove(str(BENCHMARKS))
    rows = pd.DataFrame([
        # caught: the expected code; caught: nothing flagged where the expectation is "none"
        {"kind": "unseen_fault", "fault": "dead_bias", "net": "a", "family": "x", "expected": "dead_units",
         "expected_revised": "dead_units", "flagged": "dead_units", "error": None},
        {"kind": "unseen_fault", "fault": "removed_skips", "net": "b", "family": "x", "expected": "none",
         "expected_revised": "vanishing_gradients", "flagged": "vanishing_gradients", "error": None},
        {"kind": "unseen_fault", "fault": "removed_skips", "net": "c", "family": "x", "expected": "none",
         "expected_revised": "none", "flagged": None, "error": None},
        {"kind": "unseen_fault", "fault": "dead_bias", "net": "d", "family": "x", "expected": "dead_units",
         "expected_revised": "dead_units", "flagged": None, "error": "RuntimeError: boom"},
        {"kind": "fault", "fault": "dead_bias", "net": "e", "family": "x", "expected": "dead_units",
         "expected_revised": "dead_units", "flagged": "", "error": None},  # the matrix: not counted here
    ])
    text = "\n".join(calibrate.kept_out_faults_section(rows))
    assert "**2/3 caught**" in text and "3/3 with `REVISED`" in text and "1 crashed" in text
    assert "Held-out pairs" not in text  # no rows of that set
    # a pair whose fault found nothing to change is no row at all
    (tmp_path / "index.jsonl").write_text('{"name": "dead_bias__unseen_hf_mixtral_tiny", "fault": "dead_bias", '
                                          '"net": "unseen_hf_mixtral_tiny", "error": "NotApplicable: no bias"}\n')
    assert calibrate.measure_runs(tmp_path, "unseen_fault", (20,)) == []


def test_a_recurrence_written_in_python_is_no_stack_of_residual_blocks(benchmarks, tmp_path):
    """RWKV's attention (Hugging Face's CPU path) runs its WKV recurrence step by step in
    Python: 32 additions a block that pass nothing through their "branch" where the state is
    still zero. They are recorded as block rows, and no block rule judges them (it reported
    `idle_branch` on the stock model); the real residual additions stay judged."""
    population, _ = benchmarks
    from gradsight.diagnosis import rules
    from gradsight.store.view import RunView

    (net,) = [n for n in population.load_nets(verbose=False, unseen=True) if n.name == "unseen_hf_rwkv_tiny"]
    entry = population.record_net(net, tmp_path, steps=5)
    assert entry["error"] is None, entry.get("traceback")
    findings = gs.diagnose(tmp_path / net.name)
    assert not [f for f in findings if f.severity >= "warning"], gs.format_findings(findings)
    with RunView(tmp_path / net.name) as view:
        recurrence = rules.recurrence_additions(view)
        assert len(recurrence) > 2 * rules.MAX_ADDITIONS_PER_MODULE
        assert all(b.startswith("rwkv.blocks.") and ".attention[" in b for b in recurrence)
        judged = rules._table(view, "block", "skip_grad_norm").columns
        assert not set(judged) & recurrence
