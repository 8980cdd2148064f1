"""``benchmarks/gpu_check.py`` stays working where there is no GPU: its dry run on the CPU at
tiny sizes writes the table, and without a CUDA device the check itself says so and exits 2."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import load_benchmark


@pytest.fixture
def gpu_check(monkeypatch):
    return load_benchmark("gpu_check", monkeypatch)


def test_the_dry_run_on_the_cpu_writes_one_table(gpu_check, tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "gpu_check.md"
    args = ["--device", "cpu", "--quick", "--models", "gpt2", "--tests", "none", "--time-limit", "1", "--out", str(out)]
    assert gpu_check.main(args) == 0
    text = out.read_text()
    assert text in capsys.readouterr().out
    assert f"torch {torch.__version__}" in text
    rows = [line for line in text.splitlines() if line.startswith("| GPT-2 (2 layers, width 64), batch 2x32 tokens")]
    assert [row.split(" | ")[1].split(" (")[0] for row in rows] == ["bare", "gradsight quickstart",
                                                                    "gradsight grads only"]
    assert all(row.endswith("| n/a (CPU) |") for row in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without a CUDA device")
def test_without_a_cuda_device_the_check_says_so_and_exits_2(gpu_check, capsys):
    assert gpu_check.main(["--quick"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
