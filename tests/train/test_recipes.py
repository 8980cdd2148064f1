"""The recipes: optimizer settings and the per-step learning-rate schedule."""

from __future__ import annotations

import pytest
import torch

from gradsight.train import RECIPES, Recipe, get_recipe, he2016, lecture, train


def test_lecture_is_adam_1e3_batch64_10_epochs():
    assert (lecture.optimizer, lecture.lr, lecture.batch_size, lecture.epochs) == ("adam", 1e-3, 64, 10)
    opt = lecture.make_optimizer([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["lr"] == 1e-3
    assert opt.param_groups[0]["weight_decay"] == 0.0
    assert lecture.lr_at(0, 100) == lecture.lr_at(99, 100) == 1e-3  # constant


def test_he2016_is_sgd_momentum_wd_batch128():
    opt = he2016.make_optimizer([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 1e-4)
    assert he2016.batch_size == 128


@pytest.mark.parametrize("epochs, expected", [
    (4, [0.1, 0.1, 0.01, 0.001]),
    (8, [0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]),
])
def test_he2016_divides_lr_by_10_at_50_and_75_percent(epochs, expected):
    steps_per_epoch = 10
    total = steps_per_epoch * epochs
    param = torch.nn.Parameter(torch.zeros(1))
    opt = he2016.make_optimizer([param])
    sched = he2016.make_scheduler(opt, total)
    lr_by_step = []
    for _ in range(total):
        lr_by_step.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    at_epoch_start = lr_by_step[::steps_per_epoch]
    assert at_epoch_start == pytest.approx(expected)
    assert lr_by_step == pytest.approx([he2016.lr_at(s, total) for s in range(total)])
    # the drops happen exactly at steps total/2 and 3*total/4
    assert lr_by_step[total // 2 - 1] == pytest.approx(0.1) and lr_by_step[total // 2] == pytest.approx(0.01)
    assert lr_by_step[3 * total // 4 - 1] == pytest.approx(0.01) and lr_by_step[3 * total // 4] == pytest.approx(0.001)


def test_runner_logs_the_he2016_lr_of_each_epoch(small_data, tmp_path):
    # 256 samples / batch 128 = 2 steps per epoch, 8 steps: drops at steps 4 and 6
    result = train("plain", small_data, "he2016", depth=8, epochs=4, run_dir=tmp_path / "run", progress=False)
    assert [e.lr for e in result.epochs] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    import gradsight as gs

    with gs.open_run(tmp_path / "run") as run:
        assert list(run.metrics()["lr"].dropna()) == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_get_recipe_names_the_valid_ones():
    assert get_recipe("lecture") is lecture and get_recipe(he2016) is he2016
    assert sorted(RECIPES) == ["he2016", "lecture"]
    with pytest.raises(ValueError, match="lecture, he2016"):
        get_recipe("adamw")


def test_recipe_rejects_bad_settings():
    with pytest.raises(ValueError, match="optimizer"):
        Recipe(name="x", optimizer="rmsprop", lr=0.1, batch_size=1, epochs=1)
    with pytest.raises(ValueError, match="fractions"):
        Recipe(name="x", optimizer="sgd", lr=0.1, batch_size=1, epochs=1, lr_milestones=(50,))
