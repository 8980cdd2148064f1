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


class _ExamplesNet(nn.Module):
    """The network of pytorch/examples' ``mnist/main.py`` (two convolutions, two dropouts), narrower."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, 1), nn.Conv2d(8, 16, 3, 1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(16 * 12 * 12, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = self.dropout2(F.relu(self.fc1(torch.flatten(self.dropout1(x), 1))))
        return F.log_softmax(self.fc2(x), dim=1)


@pytest.mark.parametrize("train_mode_each_epoch", [True, False])
def test_the_mnist_examples_loop_on_real_digits_and_its_classic_slip(tmp_path, train_mode_each_epoch):
    """pytorch/examples' MNIST loop on mnist5k digits: ``train()`` sets train mode at each epoch
    and ``test()`` eval mode, Adadelta, StepLR; clean. The slip: ``model.train()`` once before the
    epochs, so every epoch after the first evaluation trains in eval mode."""
    data = gs.data.load_dataset("mnist5k", limit=320)
    torch.manual_seed(1)
    model = _ExamplesNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    steps_per_epoch = 5
    with gs.watch(model, tmp_path / "run", optimizer=opt) as mon:
        model.train()
        for _ in range(3):
            if train_mode_each_epoch:
                model.train()
            for x, y in gs.data.batches(data.train_x[:64 * steps_per_epoch], data.train_y[:64 * steps_per_epoch], 64,
                                        shuffle=False):
                opt.zero_grad()
                loss = F.nll_loss(model(x), y)
                loss.backward()
                mon.step(loss)
                opt.step()
            model.eval()
            with torch.no_grad():
                model(data.test_x[:256]).argmax(1)
            scheduler.step()
    flags = _flags(tmp_path / "run")
    assert flags == {t: float(not train_mode_each_epoch and t >= steps_per_epoch) for t in range(15)}
    found = [f for f in gs.diagnose(tmp_path / "run") if f.code == "trained_in_eval_mode"]
    if train_mode_each_epoch:
        assert found == []
    else:
        assert [(f.severity, f.steps) for f in found] == [("warning", list(range(5, 15)))]
        assert found[0].measured["dropout_layers"] == 2.0 and "dropout layer(s) were off" in found[0].message
