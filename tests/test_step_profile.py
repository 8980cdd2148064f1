"""``benchmarks/step_profile.py``: a recorded step split into the C kernel's call and the rest,
beside the floor, inside a training loop."""

from __future__ import annotations

import re
import sys

import torch

from gradsight.stats import native
from tests.conftest import load_benchmark


def test_the_step_splits_into_the_kernel_and_the_rest(monkeypatch, capsys):
    profile = load_benchmark("step_profile", monkeypatch)
    run = native._run
    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", ["step_profile.py", "--width", "16", "--layers", "2", "--steps", "6",
                                      "--warmup", "2", "--threads", str(threads)])
    profile.main()
    out = capsys.readouterr().out
    lines = out.splitlines()[1:]  # (after the heading)
    times = {re.search(r"floor|monitor\.step|kernel|else", line)[0]: float(re.search(r": +([0-9.]+) ms", line)[1])
             for line in lines}
    assert set(times) == ({"floor", "monitor.step", "kernel", "else"} if native.library() else {"floor", "monitor.step"})
    if native.library():
        assert times["kernel"] + times["else"] <= times["monitor.step"] * 1.5  # (medians of a split)
    assert native._run is run  # put back
