"""The recipes: optimizer settings and the per-step learning-rate schedule."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from gradsight.train import RECIPES, Recipe, get_recipe, gpt, he2016, lecture, train


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
    assert sorted(RECIPES) == ["gpt", "he2016", "lecture"]
    with pytest.raises(ValueError, match="lecture, he2016, gpt"):
        get_recipe("adamw")


def test_recipe_rejects_bad_settings():
    with pytest.raises(ValueError, match="optimizer"):
        Recipe(name="x", optimizer="rmsprop", lr=0.1, batch_size=1, epochs=1)
    with pytest.raises(ValueError, match="fractions"):
        Recipe(name="x", optimizer="sgd", lr=0.1, batch_size=1, epochs=1, lr_milestones=(50,))
    with pytest.raises(ValueError, match="warmup_steps"):
        Recipe(name="x", optimizer="adam", lr=0.1, batch_size=1, epochs=1, warmup_steps=-1)
    with pytest.raises(ValueError, match="batches_per_epoch"):
        Recipe(name="x", optimizer="adam", lr=0.1, batch_size=1, epochs=1, batches_per_epoch=0)


def test_gpt_is_adamw_with_nanogpt_betas_and_decay_on_matrices_only():
    assert (gpt.optimizer, gpt.lr, gpt.betas, gpt.weight_decay) == ("adamw", 1e-3, (0.9, 0.95), 0.1)
    assert (gpt.batch_size, gpt.context, gpt.batches_per_epoch, gpt.warmup_steps, gpt.grad_clip) == (32, 64, 100, 0, 0)
    assert gpt.steps_per_epoch(10_000_000) == 100  # an epoch is a fixed number of batches
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 3))
    optimizer = gpt.make_optimizer(model.parameters())
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in plain["params"]} == {id(model[1].weight), id(model[1].bias), id(model[2].bias)}
    assert all(g["betas"] == (0.9, 0.95) for g in optimizer.param_groups)
    assert "AdamW, lr 0.001, betas (0.9, 0.95), weight decay 0.1 on matrices, batch 32, context 64" in gpt.summary()


def test_linear_warmup_scales_the_first_steps_then_holds_the_rate():
    warm = replace(gpt, warmup_steps=4)
    assert [warm.lr_at(step, 100) for step in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert [gpt.lr_at(step, 100) for step in (0, 50, 99)] == [1e-3] * 3
    assert "linear warmup over 4 steps" in warm.summary()
    model = torch.nn.Linear(2, 2)
    optimizer = warm.make_optimizer(model.parameters())
    scheduler = warm.make_scheduler(optimizer, 100)
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([warm.lr_at(step, 100) for step in range(5)])
