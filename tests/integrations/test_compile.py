"""``torch.compile``: gradsight adds no graph breaks and no recompilations.

Graph breaks and compiled graphs are counted with dynamo's own counters
(``torch._dynamo.utils.counters``) for the same training loop with and without a
monitor; a model that breaks on purpose shows that the count sees breaks.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

import gradsight as gs
from tests.instrument.reference import assert_matches, reference

STEPS = 3


class Net(nn.Module):
    def __init__(self, graph_break: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 2)
        self.graph_break = graph_break

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if self.graph_break:
            torch._dynamo.graph_break()
        return self.head(h + x.sum(-1, keepdim=True))


def _compile_counts(watch: str | None, tmp_path, graph_break: bool = False) -> tuple[int, int, nn.Module]:
    """(graph breaks, compiled graphs) of STEPS training steps of a compiled model."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = Net(graph_break)
    compiled = torch.compile(model, backend="aot_eager")
    monitor = None
    if watch == "model":  # the usual way: watch the module, train its compiled wrapper
        monitor = gs.watch(model, tmp_path / "run-model", backend="eager")
    elif watch == "compiled":  # watching the OptimizedModule works as well
        monitor = gs.watch(compiled, tmp_path / "run-compiled", backend="eager")
    x = torch.randn(8, 6)
    for _ in range(STEPS):
        compiled(x).pow(2).mean().backward()
        if monitor is not None:
            monitor.step()
        if _ < STEPS - 1:
            model.zero_grad()
    if monitor is not None:
        monitor.close()
    breaks = sum(counters["graph_break"].values())
    return breaks, counters["stats"]["unique_graphs"], model


@pytest.mark.parametrize("watch", ["model", "compiled"])
def test_monitor_adds_no_graph_breaks_or_recompiles(tmp_path, watch):
    bare = _compile_counts(None, tmp_path)
    watched = _compile_counts(watch, tmp_path)
    assert watched[:2] == bare[:2] == (0, 1)
    run = gs.open_run(tmp_path / f"run-{watch}")
    assert run.steps() == list(range(STEPS))
    frame = run.frame()
    if watch == "model":
        assert_matches(frame, reference(watched[2]), step=STEPS - 1)


def test_the_count_sees_graph_breaks(tmp_path):
    bare = _compile_counts(None, tmp_path, graph_break=True)
    watched = _compile_counts("model", tmp_path, graph_break=True)
    assert bare[0] > 0
    assert watched[:2] == bare[:2]


def test_eager_forward_between_compiled_calls_does_not_recompile(tmp_path):
    """Regression: the forward-order hooks read the monitor's state before checking
    ``torch.compiler.is_compiling()``, so dynamo guarded on that state and an eager
    forward (which learns the order) made the next compiled call recompile."""
    torch._dynamo.reset()
    counters.clear()
    model = Net()
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(4, 6)
    with gs.watch(model, tmp_path / "run", backend="eager") as monitor:
        compiled(x)
        model(x)  # eager: learns the forward order
        compiled(x).sum().backward()
        assert counters["stats"]["unique_graphs"] == 1
        monitor.step()
    assert gs.open_run(tmp_path / "run").meta["depth_source"] == "forward"
