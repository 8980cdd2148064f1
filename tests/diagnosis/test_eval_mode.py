"""Training steps taken with the model in eval mode (``model.eval()`` left on after an
evaluation): recorded per step as ``eval_mode`` and reported by the doctor."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradsight as gs


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                         nn.ReLU(), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * 4 * 4, 3), nn.Dropout(0.0))


def _train(model: nn.Module, run_dir, evaluate_at: int | None, steps: int = 8, frozen_bn: bool = False) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    with gs.watch(model, run_dir, optimizer=opt) as mon:
        model.train()
        if frozen_bn:  # on purpose: the BatchNorm layers alone in eval mode
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        for t in range(steps):
            if t == evaluate_at:  # an evaluation that forgets model.train() after it
                model.eval()
                with torch.no_grad():
                    model(torch.randn(4, 1, 8, 8, generator=g))
            x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
            F.cross_entropy(model(x), y).backward()
            mon.step()
            opt.step()
            opt.zero_grad()


def _flags(run_dir) -> dict[int, float]:
    with gs.open_run(run_dir) as run:
        return {int(k): float(v) for k, v in run.series("eval_mode", level="model").iloc[:, 0].items()}


def test_steps_after_a_forgotten_train_are_recorded_and_reported_with_what_eval_mode_changed(tmp_path):
    model = _cnn()
    _train(model, tmp_path / "run", evaluate_at=4)
    assert _flags(tmp_path / "run") == {t: float(t >= 4) for t in range(8)}
    [finding] = [f for f in gs.diagnose(tmp_path / "run") if f.code == "trained_in_eval_mode"]
    assert finding.severity == "warning" and finding.steps == [4, 5, 6, 7]
    # counted here by class name: two BatchNorm2d, one Dropout with p > 0 (the p = 0 one changes nothing)
    assert finding.measured == {"eval_steps": 4.0, "recorded_steps": 8.0, "batchnorm_layers": 2.0,
                                "dropout_layers": 1.0}
    assert "model.train()" in finding.message and "at steps 4-7" in finding.message


def test_a_model_whose_modules_do_not_depend_on_the_mode_gets_an_info(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    _train(model, tmp_path / "run", evaluate_at=0)
    [finding] = [f for f in gs.diagnose(tmp_path / "run") if f.code == "trained_in_eval_mode"]
    assert finding.severity == "info" and finding.measured["eval_steps"] == 8.0


@pytest.mark.parametrize("frozen_bn", [False, True])
def test_training_in_train_mode_or_with_batchnorm_frozen_on_purpose_is_no_finding(tmp_path, frozen_bn):
    _train(_cnn(), tmp_path / "run", evaluate_at=None, frozen_bn=frozen_bn)
    assert set(_flags(tmp_path / "run").values()) == {0.0}
    assert "trained_in_eval_mode" not in {f.code for f in gs.diagnose(tmp_path / "run")}
